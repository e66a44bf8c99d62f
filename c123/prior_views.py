"""What the 3D prior imagines: its own views of the reference object, drawn before training into OUT/prior_views/.

When a case fails, the first question is what the 3D prior thinks the unseen sides look like. Before the first
training step the run asks the conditioned 3D prior (Zero-1-to-3, Stable Zero123 or the oracle) for its own
views (`sample`: Zero-1-to-3's DDIM sampler with classifier-free guidance; the oracle answers the true views)
from the boundary detector's cameras (`c123.stages.detector_cameras`: schedule.num_views azimuths at elevation 0),
each seen through the prior's camera vector relative to the reference camera, exactly as SDS asks it in training.

    OUT/prior_views/az_000.png, az_045.png, ...   one RGB view per azimuth (degrees, rounded), at prior.zero123_size
    OUT/prior_views/prior_views.json              the record below, plus what it was drawn for (reuse)

Every view draws from a generator of its own, seeded from the run's seed and the view's index (`view_seed`), on
the run's device; the draw also runs inside `torch.random.fork_rng`, so the run's generator and the global
random streams are where they were, and training is the same to the bit with the views on or off. A rerun of
the same input and config (a resumed run) reuses the files when they are all there. result.json `prior_views`
holds the record (or `{"skipped": reason}`); `outputs["prior_views"]` names the folder when it holds views.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from c123.atomic import atomic_path, write_atomic
from c123.config import ReconstructConfig
from c123.schedules import get_variant

if TYPE_CHECKING:
    import torch

# torch and the stages are imported where views are drawn: the viewer and the report read records without them

PRIOR_VIEWS_DIR = "prior_views"
RECORD_FILE = "prior_views.json"
SAMPLE_ETA = 1.0
"""DDIM eta of the prior views: Zero-1-to-3's gradio_new.py main_run (c123.priors.zero123.SAMPLE_ETA)."""


def derived_seed(purpose: str, run_seed: int, index: int = 0) -> int:
    """A seed of its own for a draw beside training: the first 4 bytes (little-endian) of
    sha256('c123 PURPOSE SEED INDEX'), so it shares no stream with the run's generator (seeded with SEED)."""
    digest = hashlib.sha256(f"c123 {purpose} {run_seed} {index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@contextlib.contextmanager
def draws_aside(device):
    """A block whose random draws leave the run's global streams where they were (torch.random.fork_rng on the
    CPU stream and, on CUDA, on `device`'s own GPU), so training draws what it would without the block."""
    import torch

    device = torch.device(device)
    fork = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        yield


def view_seed(run_seed: int, index: int) -> int:
    """The seed of prior view `index` (derived_seed 'prior view')."""
    return derived_seed("prior view", run_seed, index)


def view_file(azimuth: float, taken: set[str]) -> str:
    """prior_views/az_DDD.png for an azimuth in degrees (rounded, in [0, 360)); an index suffix only if two
    azimuths round alike (more than 360 views)."""
    name = f"az_{round(azimuth) % 360:03d}"
    if f"{PRIOR_VIEWS_DIR}/{name}.png" in taken:
        name = f"{name}_{len(taken)}"
    return f"{PRIOR_VIEWS_DIR}/{name}.png"


def skip_reason(cfg: ReconstructConfig, prior) -> str | None:
    """Why a run draws no prior views (None: it draws them)."""
    if not cfg.log.prior_views:
        return "log.prior_views is off"
    if "zero123" not in get_variant(cfg.schedule.variant).priors or prior is None:
        return f"variant {cfg.schedule.variant} uses no 3D prior"
    if not callable(getattr(prior, "sample", None)):
        name = getattr(prior, "model_id", type(prior).__name__)
        return f"the 3D prior {name} draws no views of its own (no sample())"
    return None


def draw_prior_views(prior, cfg: ReconstructConfig, out: Path, device, *, input_digest: str,
                     announce: Callable[[str], None] = lambda line: None) -> dict:
    """Write OUT/prior_views/ (or reuse what a run of the same input and config wrote there) and return its
    record for result.json: {"views": [{file, azimuth, polar, delta_azimuth, delta_polar, seed}], "sampler":
    {steps, guidance_scale, eta, seed}, "model_id", "size", "seconds", "reused"}; or {"skipped": reason}."""
    reason = skip_reason(cfg, prior)
    if reason is not None:
        return {"skipped": reason}
    folder = Path(out) / PRIOR_VIEWS_DIR
    model_id = str(getattr(prior, "model_id", type(prior).__name__))
    sampler = {"steps": cfg.log.prior_view_steps, "guidance_scale": cfg.log.prior_view_guidance, "eta": SAMPLE_ETA,
               "seed": cfg.seed}
    drawn_for = {"input_digest": input_digest, "config_hash": cfg.hash(), "model_id": model_id, "sampler": sampler}
    if (previous := _reusable(folder, Path(out), drawn_for)) is not None:
        return {**previous, "reused": True}

    import torch

    from c123.cameras import reference_camera
    from c123.stages import detector_cameras

    cams = detector_cameras(cfg)
    ref = reference_camera(cfg.camera)
    announce(f"drawing the 3D prior's views at {len(cams)} azimuths ({cfg.log.prior_view_steps} DDIM steps, "
             f"guidance {cfg.log.prior_view_guidance:g}) into {PRIOR_VIEWS_DIR}/")
    for stale in [*folder.glob("az_*.png"), folder / RECORD_FILE]:  # another config's (another number of views)
        stale.unlink(missing_ok=True)
    device = torch.device(device)
    tic = time.perf_counter()
    views, taken = [], set()
    with draws_aside(device):  # the global streams stay where seed_everything put them
        for i in range(len(cams)):
            seed = view_seed(cfg.seed, i)
            generator = torch.Generator(device=device).manual_seed(seed)
            image = prior.sample(cams[i].to(device), generator=generator, steps=sampler["steps"],
                                 guidance_scale=sampler["guidance_scale"], eta=sampler["eta"])
            file = view_file(float(cams.azimuth[i]), taken)
            taken.add(file)
            _save_rgb(image[0], Path(out) / file)
            azimuth, polar = float(cams.azimuth[i]), float(cams.polar[i])
            views.append({"file": file, "azimuth": azimuth, "polar": polar,
                          "delta_azimuth": (azimuth - float(ref.azimuth[0]) + 180.0) % 360.0 - 180.0,
                          "delta_polar": polar - float(ref.polar[0]), "seed": seed})
    size = int(image.shape[-1])
    record = {"views": views, "sampler": sampler, "model_id": model_id, "size": size,
              "seconds": time.perf_counter() - tic, "reused": False}
    write_atomic(folder / RECORD_FILE, json.dumps({"drawn_for": drawn_for, "record": record}, indent=2))
    return record


def read_prior_views(folder: Path, result: dict | None = None) -> dict | None:
    """The prior-view record of a run folder: result.json's `prior_views` when given, else the one
    OUT/prior_views/prior_views.json keeps (a run that stopped before result.json drew them first); None if
    neither exists."""
    if isinstance(result, dict) and isinstance(result.get("prior_views"), dict):
        return result["prior_views"]
    try:
        record = json.loads((Path(folder) / PRIOR_VIEWS_DIR / RECORD_FILE).read_text())["record"]
        return record if isinstance(record, dict) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _reusable(folder: Path, out: Path, drawn_for: dict) -> dict | None:
    """The record of views drawn earlier for exactly `drawn_for`, when every one of its files is still there."""
    try:
        saved = json.loads((folder / RECORD_FILE).read_text())
        if saved["drawn_for"] != drawn_for:
            return None
        record = saved["record"]
        if all((out / v["file"]).is_file() for v in record["views"]):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _save_rgb(image: torch.Tensor, path: Path) -> None:
    """[3,H,W] in [0,1] as an 8-bit RGB PNG (rounded as the run's other PNGs)."""
    import numpy as np
    from PIL import Image

    array = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)
