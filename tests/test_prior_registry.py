"""Adding a prior is its module plus one registry line: a stub 3D prior, registered here, is loaded by the real
loading path, conditioned on the reference, asked for its loss on the novel views of a real (tiny) run, and
named in result.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from c123 import config as C
from c123.preprocess import ReconstructionInput
from c123.priors import loading
from c123.priors.loading import Guidance, PriorEntry, Priors, load_priors
from c123.reconstruct import reconstruct
from c123.schedules import get_variant


class StubPrior:
    """A 3D prior that pulls every novel view towards the reference's mean colour and records its calls."""

    def __init__(self, name: str):
        self.model_id, self.variant_loaded = name, "none"
        self.reference, self.calls = None, []

    def set_reference(self, rgb_white: torch.Tensor, ref_cams) -> None:
        self.reference = rgb_white

    def loss(self, images, cams, *, t_range, generator):
        self.calls.append((tuple(images.shape), len(cams), t_range))
        return ((images - self.reference.mean((2, 3), keepdim=True)) ** 2).mean()


def load_stub(cfg, device):
    prior = StubPrior(cfg.prior.zero123_model)
    return prior, {"zero123": prior.model_id, "zero123_variant": prior.variant_loaded}


@pytest.fixture
def stub_registered(monkeypatch):
    entry = PriorEntry("stub", "zero123", load_stub, chooses=lambda cfg: cfg.prior.zero123_model.startswith("stub:"))
    monkeypatch.setattr(loading, "REGISTRY", [entry, *loading.REGISTRY])  # the one line a new prior adds


def stub_config() -> C.ReconstructConfig:
    cfg = C.tiny()
    cfg.preset = "stub"  # not a tiny-model preset: nothing is written for it
    cfg.prior.zero123_model = "stub:grey"
    cfg.schedule.variant = "3d-only"
    cfg.train.nerf_iters, cfg.train.dmtet_iters, cfg.train.checkpoint_every = 4, 0, 0
    cfg.train.eval_views, cfg.train.eval_size, cfg.train.video_frames, cfg.train.export_mesh = 1, 16, 1, False
    return cfg


def test_a_registered_prior_fills_its_slot_through_the_loading_path(stub_registered):
    priors = load_priors(stub_config(), "cpu")
    assert isinstance(priors.zero123, StubPrior) and isinstance(priors.zero123, Guidance)
    assert priors.sd is None and priors.clip is None  # 3d-only needs neither
    assert priors.model_ids == {"zero123": "stub:grey", "zero123_variant": "none"}
    assert loading.chosen("zero123", C.tiny()).name == "zero123"  # other configs keep Zero-1-to-3


def test_a_registered_prior_guides_a_run_and_is_named_in_its_result(stub_registered, tmp_path):
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 100, 50, 255)
    cfg = stub_config()
    priors = load_priors(cfg, "cpu")
    result = reconstruct(ReconstructionInput("square", rgba), cfg, tmp_path, priors=priors)
    stub = priors.zero123
    assert stub.reference is not None and stub.reference.shape == (1, 3, cfg.prior.zero123_size, cfg.prior.zero123_size)
    novel = [s for s in range(1, 5) if s % cfg.train.ref_every]  # the steps that are not reference steps
    assert [c[1:] for c in stub.calls] == [(1, cfg.prior.t_range_nerf)] * len(novel)
    assert json.loads((tmp_path / "result.json").read_text())["model_ids"] == result["model_ids"] == \
        {"zero123": "stub:grey", "zero123_variant": "none"}
    # a prior that only guides draws no views of its own: the run says so instead of writing prior_views/
    assert result["prior_views"] == {"skipped": "the 3D prior stub:grey draws no views of its own (no sample())"}
    assert not (tmp_path / "prior_views").exists() and "prior_views" not in result["outputs"]


def test_which_priors_a_variant_needs_is_a_property_of_the_variant():
    assert get_variant("3d-only").priors == ("zero123",)
    assert get_variant("fixed-switch").priors == ("zero123", "sd")
    assert get_variant("consistent123").priors == ("zero123", "sd", "clip")
    assert set(get_variant("consistent123").priors) <= {f for f in Priors.__dataclass_fields__}
