"""The oracle answers in the camera-vector convention of the 3D prior it stands in for (prior.zero123_family):
with the method's right vector its target is the true view at the asked camera, with a mirrored vector or a
wrong 4th entry it is another view, for Zero-1-to-3 and for Stable Zero123 alike. Its `sample` is its target.

The error figures (mean squared error on white of the oracle's target against the true view at the camera
asked for, toy scene, 32 x 32) are printed; run with -s to see them.
"""

from __future__ import annotations

import pytest
import torch

from c123 import config as C
from c123.cameras import orbit_cameras
from c123.priors import stable_zero123, zero123
from c123.priors.oracle import OraclePrior
from c123.synthetic import get_scene

SIZE = 32
FOVY = 20.0
REFS = {"on the equator": orbit_cameras(90.0, 0.0, 3.2, FOVY), "from above": orbit_cameras(60.0, 30.0, 3.2, FOVY)}
# views away from the reference on both sides, above and below; at the reference's distance, which is all
# Stable Zero123 can see (its vector has no radius)
VIEWS = orbit_cameras([70.0, 100.0, 85.0, 60.0], [60.0, -90.0, 150.0, -30.0], 3.2, FOVY)
RIGHT = 1e-10
"""Largest MSE of a right answer (the same cameras up to float64 rounding: the same pixels)."""
WRONG = 1e-3
"""Smallest MSE of a wrong answer: a visibly different view of the asymmetric toy."""
ZERO123_VECTOR, STABLE_VECTOR = zero123.camera_vector, stable_zero123.camera_vector  # before any monkeypatch


@pytest.fixture(scope="module")
def scene():
    return get_scene("toy")


def truth(scene, cams):
    rgba = scene.render(cams, SIZE, SIZE, supersample=1)["rgba"]
    return (rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])).permute(0, 3, 1, 2)


def target_error(scene, convention: str, ref, views=VIEWS) -> float:
    oracle = OraclePrior(scene, convention=convention, size=SIZE)
    oracle.set_reference(torch.ones(1, 3, SIZE, SIZE), ref)
    return float(((oracle.target(views, SIZE, SIZE) - truth(scene, views)) ** 2).mean())


def mirrored_zero123(view, ref):
    return ZERO123_VECTOR(view, ref) * torch.tensor([1.0, -1.0, 1.0, 1.0])


def mirrored_stable(view, ref):
    return STABLE_VECTOR(view, ref) * torch.tensor([1.0, -1.0, 1.0, 1.0])


def fourth(value):
    """Stable Zero123's first three entries with another 4th: value(view, ref) [B]."""
    def vector(view, ref):
        vec = ZERO123_VECTOR(view, ref)
        return torch.cat([vec[:, :3], value(view, ref).expand(len(vec))[:, None].to(vec)], -1)
    return vector


WRONG_VECTORS = {
    ("zero123", "mirrored azimuth"): (zero123, mirrored_zero123),
    ("stable-zero123", "mirrored azimuth"): (stable_zero123, mirrored_stable),
    ("stable-zero123", "zero123's vector (4th = change of radius)"): (stable_zero123, ZERO123_VECTOR),
    ("stable-zero123", "4th = elevation of the input"): (stable_zero123,
                                                          fourth(lambda v, r: torch.deg2rad(90.0 - r.polar))),
    ("stable-zero123", "4th = 90 + elevation (sign flipped)"): (stable_zero123,
                                                                 fourth(lambda v, r: torch.deg2rad(180.0 - r.polar))),
}


@pytest.mark.parametrize("where", list(REFS))
@pytest.mark.parametrize("convention", ["zero123", "stable-zero123"])
def test_with_the_right_vector_the_oracle_answers_with_the_true_view(scene, convention, where):
    error = target_error(scene, convention, REFS[where])
    print(f"\n{convention}, reference {where}: right vector, target MSE {error:.2e}")
    assert error <= RIGHT


@pytest.mark.parametrize("case", list(WRONG_VECTORS), ids=lambda c: f"{c[0]}: {c[1]}")
def test_a_mirrored_or_wrong_vector_makes_the_oracle_answer_with_another_view(monkeypatch, scene, case):
    convention, what = case
    module, wrong = WRONG_VECTORS[case]
    right = target_error(scene, convention, REFS["from above"])
    monkeypatch.setattr(module, "camera_vector", wrong)
    error = target_error(scene, convention, REFS["from above"])
    print(f"\n{convention}, {what}: target MSE {error:.2e} (right vector {right:.2e})")
    assert right <= RIGHT and error >= WRONG


def test_each_oracle_decodes_only_its_own_prior_vector(monkeypatch, scene):
    """A Zero-1-to-3 vector read as Stable Zero123's (and the reverse) gives the wrong views: the convention
    is the family's, not a guess."""
    ref = REFS["from above"]
    monkeypatch.setattr(stable_zero123, "camera_vector", ZERO123_VECTOR)
    assert target_error(scene, "stable-zero123", ref) >= WRONG
    monkeypatch.setattr(zero123, "camera_vector", fourth(lambda v, r: torch.deg2rad(r.polar)))
    assert target_error(scene, "zero123", ref) >= WRONG


def test_the_stable_oracle_answers_at_the_reference_distance(scene):
    """Stable Zero123's vector carries no radius: the oracle cannot answer closer or farther, while
    Zero-1-to-3's oracle follows the change of radius."""
    ref = REFS["on the equator"]
    farther = orbit_cameras([70.0, 100.0], [60.0, -90.0], 3.6, FOVY)
    same_angles_at_ref = orbit_cameras([70.0, 100.0], [60.0, -90.0], 3.2, FOVY)
    oracle = OraclePrior(scene, convention="stable-zero123", size=SIZE)
    oracle.set_reference(torch.ones(1, 3, SIZE, SIZE), ref)
    assert float(((oracle.target(farther, SIZE, SIZE) - truth(scene, same_angles_at_ref)) ** 2).mean()) <= RIGHT
    assert target_error(scene, "zero123", ref, farther) <= RIGHT
    assert target_error(scene, "stable-zero123", ref, farther) >= WRONG


@pytest.mark.parametrize("convention", ["zero123", "stable-zero123"])
def test_oracle_sample_is_its_target_at_its_size(scene, convention):
    oracle = OraclePrior(scene, convention=convention, size=SIZE)
    oracle.set_reference(torch.ones(1, 3, SIZE, SIZE), REFS["from above"])
    images = oracle.sample(VIEWS, generator=torch.Generator().manual_seed(0), steps=50, guidance_scale=3.0)
    assert images.shape == (4, 3, SIZE, SIZE)
    assert torch.equal(images, oracle.target(VIEWS, SIZE, SIZE))
    assert float(((images - truth(scene, VIEWS)) ** 2).mean()) <= RIGHT


def test_the_loaded_oracle_takes_its_convention_from_the_config_and_draws_at_zero123s_size():
    from c123.priors.loading import chosen
    cfg = C.verify()
    cfg.prior.oracle_scene, cfg.prior.zero123_family = "toy", "stable-zero123"
    oracle, ids = chosen("zero123", cfg).load(cfg, "cpu")  # the registry's loader, as load_priors calls it
    assert isinstance(oracle, OraclePrior) and ids == {"zero123": "oracle:toy", "zero123_variant": "none"}
    assert (oracle.convention, oracle.size) == ("stable-zero123", 256)  # not the tiny SDS size
    cfg.prior.zero123_family = "zero123"
    assert chosen("zero123", cfg).load(cfg, "cpu")[0].convention == "zero123"


def test_an_unknown_convention_is_refused(scene):
    with pytest.raises(ValueError, match="unknown camera-vector convention 'stable'"):
        OraclePrior(scene, convention="stable")
