"""Small but complete benchmark run folders for the report tests (Parquet, result.json, images, mp4/gif)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd

C10 = {"07": "fruit", "12": "ball", "43": "biont", "SpongeBob": "cartoon"}
"""A few real C10 case names and categories (from prompts.tsv)."""


def case_row(run_id, case, category, *, variant="consistent123", shape="exp", seed=0, dataset="c10",
             preset="tiny", status="ok", clip=0.75, psnr=22.0, lpips=0.08, switch=35, protocol="c123") -> dict:
    """One per_case row following docs/ARCHITECTURE.md (metrics NaN when the case failed)."""
    failed = status != "ok"
    nan = math.nan
    return {
        "run_id": run_id, "dataset": dataset, "case": case, "category": category, "variant": variant,
        "weight_shape": shape, "preset": preset, "seed": seed, "status": status,
        "error": "RuntimeError: CUDA out of memory" if failed else None,
        "switch_iteration": None if failed else switch,
        "seconds_nerf": nan if failed else 10.0, "seconds_dmtet": nan if failed else 5.0,
        "seconds_export": nan if failed else 1.0, "seconds_total": nan if failed else 16.0,
        "clip_similarity": nan if failed else clip, "psnr": nan if failed else psnr, "lpips": nan if failed else lpips,
        "metric_status": "failed" if failed else "ok", "novel_psnr": nan, "novel_lpips": nan, "chamfer_sq": nan,
        "unseen_psnr": nan, "fscore": nan, "silhouette_iou": nan, "sd_chamfer": nan, "sd_volume_iou": nan,
        "sd_psnr": nan, "sd_ssim": nan, "sd_lpips": nan,
        "protocol": protocol, "clip_model": "openai/clip-vit-base-patch16", "num_views": 8, "resolution": 64, "background": "white",
        "lpips_net": "alex", "config_hash": "0123456789abcdef", "code_version": "0.1.0", "device": "cpu",
        # ARCHITECTURE's cases/<variant>/<case>/seed<N> has no room for the shape; non-exp shapes get their own.
        "case_dir": f"cases/{variant if shape == 'exp' else variant + '-' + shape}/{case}/seed{seed}",
        "cache_key": f"{case}-{variant}-{shape}-{seed}",
    }


def write_per_case(path: Path, rows: list[dict]) -> Path:
    """per_case.parquet with the documented dtypes (seed int64, switch_iteration Int64, metrics float64)."""
    df = pd.DataFrame(rows)
    df = df.astype({"seed": "int64", "switch_iteration": "Int64", "num_views": "int64", "resolution": "int64",
                    "clip_similarity": "float64", "psnr": "float64", "lpips": "float64"})
    df.to_parquet(path, index=False)
    return path


def _image(size: int, hue: float, angle: float = 0.0) -> np.ndarray:
    """An RGBA disk with a stripe whose direction follows `angle` (so orbit views differ)."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    inside = x**2 + y**2 < 0.8
    stripe = (np.cos(angle) * x + np.sin(angle) * y) > 0
    rgb = np.stack([np.full_like(x, hue), 0.4 + 0.4 * stripe, 1 - hue * np.ones_like(x)], -1)
    rgba = np.concatenate([rgb, inside[..., None]], -1)
    return (rgba * 255).astype(np.uint8)


def write_prior_views(folder: Path, *, case: str, views: int = 8, size: int = 32,
                      model_id: str = "tiny/zero123") -> dict:
    """OUT/prior_views/ as c123/prior_views.py writes it (az_DDD.png and prior_views.json); returns the record."""
    (folder / "prior_views").mkdir(parents=True, exist_ok=True)
    hue = (sum(map(ord, case)) % 10) / 10
    entries = []
    for i in range(views):
        azimuth = 360.0 * i / views
        file = f"prior_views/az_{round(azimuth) % 360:03d}.png"
        iio.imwrite(folder / file, _image(size, 1 - hue, 2 * math.pi * i / views + 1.0)[..., :3])
        entries.append({"file": file, "azimuth": azimuth, "polar": 90.0,
                        "delta_azimuth": (azimuth + 180.0) % 360.0 - 180.0, "delta_polar": 0.0, "seed": 1000 + i})
    record = {"views": entries, "sampler": {"steps": 4, "guidance_scale": 3.0, "eta": 1.0, "seed": 0},
              "model_id": model_id, "size": size, "seconds": 0.5, "reused": False}
    drawn_for = {"input_digest": "0" * 16, "config_hash": "0123456789abcdef", "model_id": model_id,
                 "sampler": record["sampler"]}
    (folder / "prior_views" / "prior_views.json").write_text(json.dumps({"drawn_for": drawn_for, "record": record}))
    return record


def write_case(folder: Path, *, case: str, seed: int, switch: int, views: int = 8, size: int = 64,
               prior_views: bool = True) -> None:
    """A reconstruction output folder: result.json (detector, weights), reference, views, the 3D prior's views,
    mp4 and gif."""
    (folder / "views").mkdir(parents=True, exist_ok=True)
    (folder / "video").mkdir(exist_ok=True)
    hue = (sum(map(ord, case)) % 10) / 10
    iio.imwrite(folder / "reference.png", _image(size, hue))
    iio.imwrite(folder / "views" / "ref_render.png", _image(size, hue))
    view_list = []
    for i in range(views):
        iio.imwrite(folder / "views" / f"view_{i:03d}.png", _image(size, hue, 2 * math.pi * i / views))
        view_list.append({"file": f"views/view_{i:03d}.png", "azimuth": 360.0 * i / views, "polar": 90.0})
    frames = [_image(size, hue, 2 * math.pi * i / 8)[..., :3] for i in range(8)]
    iio.imwrite(folder / "video" / "rgb.mp4", frames, fps=8, codec="libx264", pixelformat="yuv420p")
    iio.imwrite(folder / "video" / "rgb.gif", frames, duration=125, loop=0)
    its = list(range(20, 51, 3))
    s = [0.20 + 0.05 * (1 - math.exp(-(i - 20) / 8)) + 0.002 * seed for i in its]
    w_its = list(range(0, 80, 4))
    r = [max(0.0, (i - switch) / (80 - switch)) for i in w_its]
    w2 = [1e-5 + (1 - 1e-5) * (1 - math.exp(-v)) if i >= switch else 0.0 for i, v in zip(w_its, r)]
    result = {
        "case": case, "prompt": f"a {case}", "seed": seed, "preset": "tiny", "variant": "consistent123",
        "switch_iteration": switch,
        "detector": {"iterations": its, "S": s, "R": [abs(b - a) / a for a, b in zip(s, s[1:])] + [0.0],
                     "switch_iteration": switch, "forced": False},
        "weights": {"iterations": w_its, "w3d": [1 - w for w in w2], "w2d": w2},
        "views": view_list,
        "prior_views": write_prior_views(folder, case=case, views=views) if prior_views else
        {"skipped": "log.prior_views is off"},
        "outputs": {"reference": "reference.png", "ref_render": "views/ref_render.png", "video_rgb": "video/rgb.mp4",
                    "gif_rgb": "video/rgb.gif", "events": "tb", **({"prior_views": "prior_views"} if prior_views
                                                                    else {})},
    }
    (folder / "result.json").write_text(json.dumps(result))
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder / "tb")) as events:  # what c123.runlog writes, in miniature
        for step, w in zip(w_its, w2):
            events.add_scalar("weights/w2D", w, step)


def make_run(root: Path, run_id: str = "nightly-1", *, created_at: str = "2026-11-20T02:00:00Z",
             cases: dict[str, str] = C10, shapes=("exp",), seeds=(0,), shift: float = 0.0,
             failed: set[str] = frozenset(), media: bool = True, code_version: str = "0.1.0",
             drop: tuple[str, ...] = ()) -> Path:
    """A run folder under root/run_id; `shift` worsens every metric, `failed` names cases that failed; `drop`
    leaves per_case columns out (a run of an older schema version)."""
    run = Path(root) / run_id
    run.mkdir(parents=True)
    rows, views = [], []
    for i, (case, category) in enumerate(cases.items()):
        for shape in shapes:
            for seed in seeds:
                status = "failed" if case in failed else "ok"
                row = case_row(run_id, case, category, shape=shape, seed=seed, status=status,
                               clip=0.70 + 0.02 * i - 0.02 * shift, psnr=20.0 + i - shift,
                               lpips=0.10 - 0.01 * i + 0.02 * shift, switch=29 + 3 * i)
                rows.append(row)
                if media and status == "ok" and shape == shapes[0]:
                    write_case(run / row["case_dir"], case=case, seed=seed, switch=row["switch_iteration"])
                views += [{"run_id": run_id, "dataset": "c10", "case": case, "variant": "consistent123",
                           "seed": seed, "view_index": v, "azimuth": 45.0 * v, "elevation": 0.0,
                           "clip_similarity": row["clip_similarity"]} for v in range(8)]
    write_per_case(run / "per_case.parquet", [{**r, "code_version": code_version} for r in rows])
    if drop:
        pd.read_parquet(run / "per_case.parquet").drop(columns=list(drop)).to_parquet(run / "per_case.parquet")
    pd.DataFrame(views).astype({"seed": "int64", "view_index": "int64"}).to_parquet(run / "per_view.parquet")
    (run / "run.json").write_text(json.dumps({
        "run_id": run_id, "dataset": "c10", "preset": "tiny", "variants": ["consistent123"],
        "seeds": list(seeds), "code_version": code_version, "created_at": created_at,
        "protocol": {"clip_model": "openai/clip-vit-base-patch16", "num_views": 8, "resolution": 64}}))
    return run
