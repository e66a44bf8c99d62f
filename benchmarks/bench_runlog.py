"""What the TensorBoard run log costs: the two stages of the one loop with the log off, then on, and the events
read back with tensorboard's reader. Runs on CUDA when present (the device check of c123/runlog.py), else CPU.

The preset's field and renderer (paper on CUDA, tiny on CPU), Adam, 3d-only with a stand-in prior (an MSE of
the novel view to grey: this measures the loop and its log, not the method; the real priors need their weights). The log runs every
step here (log_every = max(1, steps / 200)), its worst case; the paper's 10000 steps log every 50.

Usage: python benchmarks/bench_runlog.py OUT_DIR [--nerf-steps 300] [--dmtet-steps 60] [--device auto] [--preset paper|tiny]
(default preset: paper on CUDA, tiny on CPU)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from c123.checkpoint import CheckpointIdentity
from c123.config import preset
from c123.priors.loading import Priors
from c123.provenance import resolve_device
from c123.runlog import RunLog
from c123.reconstruct import build_dmtet_stage, build_nerf_stage, hand_over
from c123.training import Loop, RunState, run_stage


class GreyPrior:
    """Stand-in for Zero-1-to-3 with its Guidance interface: pulls the novel view towards grey."""

    model_id, variant_loaded = "grey", "none"

    def loss(self, images, cams, *, t_range, generator):
        return 100.0 * ((images - 0.5) ** 2).mean()


def run(cfg, out: Path, device, log: bool) -> tuple[float, int, float]:
    """(seconds for both stages, log calls, seconds inside the log) of one run from scratch."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    rgba = torch.zeros(1, 4, 256, 256)
    rgba[:, :, 64:192, 80:176] = torch.tensor([0.8, 0.3, 0.2, 1.0])[None, :, None, None]
    state = RunState.start(cfg)
    runlog = RunLog(out, cfg, device) if log else None
    calls, inside = 0, 0.0

    def counted(rec):
        nonlocal calls, inside
        sync(device)
        tic = time.perf_counter()
        runlog(rec)
        sync(device)
        calls, inside = calls + 1, inside + time.perf_counter() - tic

    loop = Loop(cfg, state, gen, out / "checkpoints", CheckpointIdentity("bench", cfg.hash(), "bench"),
                lambda info: None, counted if log else None)
    priors = Priors(zero123=GreyPrior())
    nerf = build_nerf_stage(rgba, None, priors, "", cfg, gen, device)
    sync(device)
    start = time.perf_counter()
    run_stage(nerf.stage, loop)
    hand_over(nerf)
    run_stage(build_dmtet_stage(nerf, rgba, priors, cfg, gen, device)[1], loop)
    sync(device)
    seconds = time.perf_counter() - start
    if runlog is not None:
        runlog.close()
    return seconds, calls, inside


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def events_summary(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    strips = acc.Images("validation/strip")
    return {"scalars": sorted(acc.Tags()["scalars"]), "loss_total_points": len(acc.Scalars("loss/total")),
            "strip_steps": [s.step for s in strips], "strip_size": [strips[0].width, strips[0].height]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--nerf-steps", type=int, default=300)
    p.add_argument("--dmtet-steps", type=int, default=60)
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default=None,
                   help="paper (the default on CUDA) or tiny (the default on CPU: the paper field's 360 steps take "
                        "well over the minutes a look should)")
    args = p.parse_args()
    device = resolve_device(args.device)
    args.preset = args.preset or ("paper" if torch.device(device).type == "cuda" else "tiny")
    print(f"preset {args.preset} on {device}", flush=True)
    cfg = preset(args.preset)
    cfg.schedule.variant = "3d-only"
    cfg.train.optimizer, cfg.train.lr = "adam", 1e-3
    cfg.train.nerf_iters, cfg.train.dmtet_iters, cfg.train.checkpoint_every = args.nerf_steps, args.dmtet_steps, 0
    if args.preset == "paper":
        cfg.dmtet.tet_resolution, cfg.dmtet.render_size = 128, 512  # the fast preset's grid: no 256^3 tet build
    run(cfg, args.out / "warmup", device, log=True)  # CUDA init, tet grid cache, first allocations
    off, _, _ = run(cfg, args.out / "off", device, log=False)
    on, calls, inside = run(cfg, args.out / "on", device, log=True)
    steps = args.nerf_steps + args.dmtet_steps
    events = events_summary(args.out / "on")
    summary = {"device": str(device), "steps": steps, "seconds_log_off": round(off, 2), "seconds_log_on": round(on, 2),
               "ms_per_step_log_off": round(1000 * off / steps, 2), "log_calls": calls,
               "strips": len(events["strip_steps"]), "ms_inside_log_per_call": round(1000 * inside / calls, 2),
               "events": events}
    print(json.dumps(summary, indent=1))
    (args.out / "bench_runlog.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
