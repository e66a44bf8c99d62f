"""Stable Zero123 as the 3D prior: its camera vector (threestudio's and DreamGaussian's, pinned through the
geometry of their camera frames), its SDS step against a re-implementation on the tiny twin, its selection by
prior.zero123_family through the registry, and its licence announced and recorded once per run.

The reference side (tests/zero123_reference.py) imports nothing of c123.priors: it loads the tiny
stable-zero123 folder with diffusers/transformers and follows threestudio's stable_zero123_guidance.py
(`get_img_embeds`, `get_cond`, `__call__`) with the paper code's settings on top (t = max of the range, CFG 10,
the gradient scaled by the angle to the reference / 180: guidance/zero123_utils.py of lyk412/Consistent123).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from c123 import config as C
from c123.config import PriorConfig
from c123.priors import zero123 as zero123_module
from test_reference_sds import official_angle_scale, relative_error
from zero123_reference import (ReferenceModel, cams, dreamgaussian_fourth, threestudio_camera_right,
                               threestudio_vector)

RTOL = 1e-5
SIZE = 32
NERF, DMTET = (0.2, 0.6), (0.2, 0.5)
REF = cams(90.0, 0.0, 3.2)
HIGH_REF = cams(60.0, 30.0, 3.0)  # an input seen from 30 degrees above the equator



@pytest.fixture(scope="module")
def reference_image():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def stable(tiny_dirs):
    from c123.priors.stable_zero123 import StableZero123Prior
    return StableZero123Prior.from_pretrained(str(tiny_dirs["stable_zero123"]),
                                              PriorConfig(zero123_size=SIZE, sd_size=SIZE), "cpu")


@pytest.fixture(scope="module")
def reference_model(tiny_dirs):
    return ReferenceModel(tiny_dirs["stable_zero123"], None)  # ashawkey's folder holds unsuffixed weights only


# ---- the camera vector -----------------------------------------------------------------------------
def test_a_positive_azimuth_step_moves_the_camera_to_its_right_in_threestudio_and_in_ours():
    """Why threestudio's sin(+d azimuth) is ours unmirrored: in both frames the camera's own right axis is the
    direction its position moves as the azimuth grows, at every elevation."""
    from c123.cameras import orbit_cameras
    for elevation, azimuth in [(0.0, 0.0), (30.0, 75.0), (-10.0, -140.0), (60.0, 200.0)]:
        position, right = threestudio_camera_right(elevation, azimuth)
        ahead, _ = threestudio_camera_right(elevation, azimuth + 1e-3)
        assert float(F.normalize(ahead - position, dim=0) @ right) > 0.999
        ours, ours_ahead = (orbit_cameras(90.0 - elevation, a, 3.2, 20.0) for a in (azimuth, azimuth + 1e-3))
        step = F.normalize((ours_ahead.position - ours.position)[0].double(), dim=0)
        assert float(step @ ours.c2w[0, :3, 0].double()) > 0.999


def test_stable_camera_vector_is_threestudios_get_cond_and_dreamgaussians_fourth_entry():
    from c123.priors.stable_zero123 import camera_vector
    view = cams([75.0, 90.0, 60.0, 105.0, 90.0], [-120.0, 90.0, 30.0, 170.0, 200.0], [3.4, 3.2, 3.0, 3.5, 3.2])
    for ref in (REF, HIGH_REF):
        ours = camera_vector(view, ref)
        torch.testing.assert_close(ours, threestudio_vector(view, ref, stable=True), atol=1e-6, rtol=0)
        torch.testing.assert_close(ours[:, 3], dreamgaussian_fourth(ref).expand(5), atol=1e-6, rtol=0)
    # the 4th entry is the input's polar, not the change of radius (Zero-1-to-3) nor the elevation
    assert float(camera_vector(view, HIGH_REF)[0, 3]) == pytest.approx(np.deg2rad(60.0), abs=1e-6)


def test_stable_and_zero123_vectors_share_the_first_three_entries():
    from c123.priors import stable_zero123, zero123
    view = cams([75.0, 100.0], [-120.0, 45.0], [3.4, 3.0])
    torch.testing.assert_close(stable_zero123.camera_vector(view, HIGH_REF)[:, :3],
                               zero123.camera_vector(view, HIGH_REF)[:, :3])


# ---- the SDS step ----------------------------------------------------------------------------------
def reference_step(model: ReferenceModel, reference_image, images, view, ref, t_range, eps_post, noise,
                   guidance_scale=10.0):
    """threestudio's __call__ on Stable Zero123 with the paper code's t, CFG and angle scale: (grad, image grad)."""
    c, v = model.get_img_embeds(reference_image)
    x = images.detach().clone().requires_grad_(True)
    resized = F.interpolate(x, (SIZE, SIZE), mode="bilinear", align_corners=False)
    dist = model.vae.encode(resized * 2 - 1).latent_dist
    latents = (dist.mean + dist.std * eps_post) * model.vae.config.scaling_factor
    batch = latents.shape[0]
    t = int(1000 * t_range[1])
    with torch.no_grad():
        ab = model.alphas[t]
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        eps = model.guided_eps(noisy, t, model.context(c, threestudio_vector(view, ref, stable=True)), v,
                               guidance_scale)
        w = (official_angle_scale(view, ref) * (1 - ab))[:, None, None, None]
        grad = torch.nan_to_num(w * (eps - noise))
    ((grad * latents).sum() / batch).backward()
    return grad, x.grad


def stable_case(stable, model, reference_image, view, ref, t_range, seed=3):
    stable.set_reference(reference_image, ref)
    batch = view.polar.shape[0]
    images = torch.rand(batch, 3, 40, 40, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    stable.loss(images, view, t_range=t_range, generator=torch.Generator().manual_seed(seed)).backward()
    gen = torch.Generator().manual_seed(seed)  # the documented draw order: posterior noise, then noise
    shape = (batch, 4, SIZE // 8, SIZE // 8)
    eps_post, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    grad, image_grad = reference_step(model, reference_image, images, view, ref, t_range, eps_post, noise)
    return stable.last_grad, grad, images.grad, image_grad


STABLE_VIEWS = [
    (cams(75.0, -120.0, 3.4), REF, NERF),
    (cams(60.0, 30.0, 3.0), REF, DMTET),
    (cams(85.0, -40.0, 3.3), HIGH_REF, NERF),                     # an input above the equator
    (cams([70.0, 100.0], [150.0, -60.0], [3.0, 3.4]), HIGH_REF, NERF),  # a batch of two views
]


@pytest.mark.parametrize("view, ref, t_range", STABLE_VIEWS)
def test_stable_zero123_sds_gradient_equals_the_reimplemented_step(stable, reference_model, reference_image,
                                                                   view, ref, t_range):
    ours, reference, our_image_grad, reference_image_grad = stable_case(
        stable, reference_model, reference_image, view, ref, t_range)
    assert float(reference.abs().max()) > 0
    assert relative_error(ours, reference) <= RTOL
    assert relative_error(our_image_grad, reference_image_grad) <= RTOL


def _with_fourth(fourth):
    """Zero-1-to-3's first three entries and another 4th entry (fourth(cams, ref) [B])."""
    def vector(view, ref):
        vec = zero123_module.camera_vector(view, ref)
        return torch.cat([vec[:, :3], fourth(view, ref).expand(len(vec))[:, None]], -1)
    return vector


def _mirrored(view, ref):
    vec = _with_fourth(lambda v, r: torch.deg2rad(r.polar))(view, ref)
    return vec * torch.tensor([1.0, -1.0, 1.0, 1.0])


WRONG_VECTORS = {
    "mirrored azimuth": _mirrored,
    "4th = change of radius (Zero-1-to-3's vector)": lambda view, ref: zero123_module.camera_vector(view, ref),
    "4th = elevation of the input": _with_fourth(lambda v, r: torch.deg2rad(90.0 - r.polar)),
    "4th = polar of the target view": _with_fourth(lambda v, r: torch.deg2rad(v.polar)),
}


@pytest.mark.parametrize("wrong", list(WRONG_VECTORS))
def test_a_mirrored_vector_or_a_wrong_fourth_entry_fails_the_reference(monkeypatch, stable, reference_model,
                                                                       reference_image, wrong):
    """The checks above have teeth: each plausible mistake changes the vector and the gradient."""
    from c123.priors import stable_zero123
    monkeypatch.setattr(stable_zero123, "camera_vector", WRONG_VECTORS[wrong])
    view = cams(85.0, -40.0, 3.3)
    assert not torch.allclose(stable_zero123.camera_vector(view, HIGH_REF),
                              threestudio_vector(view, HIGH_REF, stable=True), atol=1e-3)
    ours, reference, _, _ = stable_case(stable, reference_model, reference_image, view, HIGH_REF, NERF)
    assert relative_error(ours, reference) > 1e-3


# ---- selection, weights, licence -------------------------------------------------------------------
def test_the_family_picks_the_default_weights_unless_a_model_is_named():
    assert C.zero123_model_id(PriorConfig()) == "bennyguo/zero123-xl-diffusers"
    assert C.zero123_model_id(PriorConfig(zero123_family="stable-zero123")) == "ashawkey/stable-zero123-diffusers"
    named = PriorConfig(zero123_family="stable-zero123", zero123_model="/models/my-stable-zero123")
    assert C.zero123_model_id(named) == "/models/my-stable-zero123"
    assert C.paper().prior.zero123_family == C.fast().prior.zero123_family == C.tiny().prior.zero123_family == \
        C.verify().prior.zero123_family == "zero123"


def test_an_unknown_family_is_a_one_line_config_error():
    from c123.config_checks import ConfigError, check_section
    with pytest.raises(ConfigError, match='^config prior.zero123_family="stable" must be one of zero123, '
                                          'stable-zero123: e.g. --set prior.zero123_family="zero123"$'):
        check_section(PriorConfig(zero123_family="stable"), "prior")


def stable_config(models: Path) -> C.ReconstructConfig:
    """The tiny preset with Stable Zero123's twin as the 3D prior, a few 3d-only steps."""
    cfg = C.tiny(str(models))
    cfg.prior.zero123_family = "stable-zero123"
    cfg.prior.zero123_model = str(models / "stable-zero123")
    cfg.schedule.variant = "3d-only"
    cfg.train.nerf_iters, cfg.train.dmtet_iters, cfg.train.checkpoint_every = 4, 0, 0
    cfg.train.eval_views, cfg.train.eval_size, cfg.train.video_frames, cfg.train.export_mesh = 1, 16, 1, False
    cfg.log.tensorboard = False
    return cfg


def test_the_family_loads_stable_zero123_through_the_registry(tiny_dirs):
    from c123.priors import loading
    from c123.priors.stable_zero123 import StableZero123Prior
    from c123.priors.zero123 import Zero123Prior
    cfg = stable_config(tiny_dirs["zero123"].parent)
    assert loading.chosen("zero123", cfg).name == "stable_zero123"
    priors = loading.load_priors(cfg, "cpu")
    assert type(priors.zero123) is StableZero123Prior and isinstance(priors.zero123, loading.Guidance)
    # ashawkey/stable-zero123-diffusers has no fp16_ema files: the unsuffixed ones load, recorded as such
    assert priors.model_ids == {"zero123": str(tiny_dirs["stable_zero123"]), "zero123_variant": "default"}
    zero = Zero123Prior.from_pretrained(str(tiny_dirs["zero123"]), cfg.prior, "cpu")
    assert not torch.equal(priors.zero123.projection.proj.weight, zero.projection.proj.weight)  # its own twin
    oracle = C.tiny(str(tiny_dirs["zero123"].parent))
    oracle.prior.zero123_family, oracle.prior.oracle_scene = "stable-zero123", "toy"
    assert loading.chosen("zero123", oracle).name == "oracle"  # the oracle still stands in when asked for


def test_the_licence_is_announced_once_and_recorded_in_result_json(tiny_dirs, tmp_path):
    from c123.preprocess import ReconstructionInput
    from c123.priors.loading import Priors, licence_notices
    from c123.priors.stable_zero123 import LICENCE
    from c123.progress import Notice
    from c123.reconstruct import reconstruct
    assert "Non-Commercial Research Community License" in LICENCE and "sai-nc-community" in LICENCE
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (200, 100, 50, 255)
    events = []
    reconstruct(ReconstructionInput("square", rgba), stable_config(tiny_dirs["zero123"].parent), tmp_path,
                progress=events.append)
    # once, among the run's other notices (e.g. the prior views being drawn), and recorded once
    assert [e.message for e in events if isinstance(e, Notice)].count(LICENCE) == 1
    assert json.loads((tmp_path / "result.json").read_text())["notices"] == [LICENCE]
    # Zero-1-to-3's weights carry no such line
    from c123.priors.zero123 import Zero123Prior
    zero = Zero123Prior.from_pretrained(str(tiny_dirs["zero123"]), PriorConfig(zero123_size=SIZE), "cpu")
    assert licence_notices(Priors(zero123=zero)) == []
