"""With an oracle 3D prior, one reference view of an asymmetric object is enough to recover its unseen sides.

The oracle answers Zero-1-to-3's question (the relative camera vector) with the true view, rebuilt with
Zero-1-to-3's own convention. So the method's whole camera path is checked: the sampler, the relative
camera vector, the renderer. Switching the prior off leaves the back unconstrained; mirroring the
azimuth sign makes the oracle answer with the mirrored views, which an asymmetric object cannot match.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from c123 import config as C
from c123.cameras import orbit, reference_camera
from c123.preprocess import ReconstructionInput
from c123.priors import zero123
from c123.priors.oracle import OraclePrior
from c123.priors.loading import Priors
from c123.progress import Event, Step
from c123.reconstruct import reconstruct
from c123.synthetic import get_scene

SIZE = 64
ITERS = 300
pytestmark = pytest.mark.slow  # three 300-step NeRF runs at 64x64: minutes each on 2 CPU cores


def oracle_config() -> C.ReconstructConfig:
    """NeRF stage only, at 64x64, with novel views shaded as the oracle renders them (albedo on white)."""
    cfg = C.tiny()
    cfg.nerf = C.NerfConfig(num_levels=6, log2_hashmap_size=14, finest_resolution=128, hidden_dim=32,
                            num_layers=2, num_samples=24, num_importance=0, bound=0.75, occupancy_grid=False)
    cfg.schedule.variant = "3d-only"
    cfg.train = C.TrainConfig(nerf_iters=ITERS, dmtet_iters=0, nerf_size=SIZE, ref_scale=1.0, ref_every=4,
                              optimizer="adam", lr=1e-2, grid_lr_scale=1.0, lambertian_prob=1.0,
                              ambient_range=(1.0, 1.0), novel_background="white", checkpoint_every=0,
                              eval_views=8, eval_size=SIZE, video_frames=2, export_mesh=False)
    cfg.loss.orientation = cfg.loss.normal_smooth_3d = cfg.loss.normal_smooth_2d = 0.0
    return cfg


def reference_input(scene) -> ReconstructionInput:
    out = scene.render(reference_camera(C.CameraConfig()), 128, 128)
    rgba = (out["rgba"][0].numpy() * 255 + 0.5).astype(np.uint8)
    return ReconstructionInput("toy", rgba, depth=out["depth"][0].numpy().astype(np.float32), prompt="")


def unseen_side_psnr(run_dir, scene) -> dict[float, float]:
    """PSNR (on white) of the written orbit views at azimuth 90 (side), 180 (back), 270 (other side)."""
    cams = orbit(8)
    truth = scene.render(cams, SIZE, SIZE)["rgba"]
    truth = truth[..., :3] * truth[..., 3:] + (1 - truth[..., 3:])
    scores = {}
    for i in (2, 4, 6):
        view = np.asarray(Image.open(run_dir / "views" / f"view_{i:03d}.png")).astype(np.float32) / 255
        rgb = view[..., :3] * view[..., 3:] + (1 - view[..., 3:])
        mse = float(((torch.from_numpy(rgb) - truth[i]) ** 2).mean())
        scores[float(cams.azimuth[i])] = -10 * np.log10(max(mse, 1e-12))
    return scores


def _log(event: Event) -> None:
    if isinstance(event, Step) and event.loss is not None and event.step % 50 == 0:
        print(f"  step {event.step}: loss {event.loss:.3f}", flush=True)


def run(tmp_path, name, *, weight=1000.0) -> dict[float, float]:
    scene = get_scene("toy")
    torch.manual_seed(0)
    priors = Priors(zero123=OraclePrior(scene, weight=weight), model_ids={"zero123": "oracle:toy"})
    reconstruct(reference_input(scene), oracle_config(), tmp_path / name, priors=priors, progress=_log)
    scores = unseen_side_psnr(tmp_path / name, scene)
    print(name, {k: round(v, 2) for k, v in scores.items()})
    return scores


@pytest.fixture(scope="module")
def oracle_scores(tmp_path_factory):
    return run(tmp_path_factory.mktemp("oracle"), "oracle")


def test_oracle_prior_recovers_back_and_sides_above_22db(oracle_scores):
    assert min(oracle_scores.values()) >= 22.0, oracle_scores


def test_without_the_prior_the_unseen_sides_stay_clearly_below(oracle_scores, tmp_path):
    off = run(tmp_path, "no-prior", weight=0.0)
    assert max(off.values()) < 20.0 and min(oracle_scores.values()) - max(off.values()) > 3.0, off


def test_a_mirrored_azimuth_convention_fails(oracle_scores, tmp_path, monkeypatch):
    monkeypatch.setattr(zero123, "AZIMUTH_SIGN", -1.0)
    mirrored = run(tmp_path, "mirrored")
    # the back view is symmetric under the flip; the two sides are not
    assert min(mirrored[90.0], mirrored[270.0]) < 20.0, mirrored
