"""Peak live tensor bytes of the paper preset's steps and priors, and the budget of a whole case.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--part nerf|priors|dmtet|budget] [--compile]

Live tensor bytes (c123.memory.LiveBytes), not RSS: the bytes a GPU would hold. Printed:
- nerf: the NeRF step (reference and novel kind, priors off: their part is measured apart) at three small
  novel-view sizes, in both occupancy modes, with every occupancy cell occupied (the worst case) and after one
  update (a young field), eager (and compiled with --compile, one size); the law bytes = fixed + per_sample *
  samples fitted on the two smaller sizes and checked on the third; the paper-size figure it predicts;
- priors: each prior's weight bytes at the preset precision from the real architectures (meta device), and the
  SDS step of the real architectures at the paper's input sizes (FakeTensorMode: nothing allocated);
- dmtet: the DMTet step at small grids and render sizes, the law in pixels and tets;
- budget: c123.memory.case_budget per preset (the one-line verdicts).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_step  # noqa: E402

from c123 import memory  # noqa: E402

MB = 1e6


def nerf_step_peak(nerf_size: int, mode: str, full: bool, compile_on: bool, models: Path,
                   grad_chunk: int = 0) -> dict:
    """{'reference': bytes, 'novel': bytes, 'state': bytes, 'samples': {...}} of the NeRF step at `nerf_size`."""
    cfg = bench_step.build(False, compile_on, models, nerf_size=nerf_size)
    cfg.nerf.occupancy_mode = mode
    if grad_chunk:
        cfg.nerf.grad_chunk_rays = grad_chunk
    torch.manual_seed(0)
    rgba, field, nerf, occupancy, priors, gen = bench_step.nerf_setup(cfg, torch.device("cpu"))
    occupancy.update(field, gen)
    if full:
        occupancy.mask.fill_(True)
    out = {}
    per_ray = cfg.nerf.num_samples + cfg.nerf.num_importance
    for step, reference in ((2004, True), (2005, False)):
        kind = "reference" if reference else "novel"
        if compile_on:
            bench_step.run_step(nerf, step, reference) if False else _step(nerf, step, reference)  # warm-up
        with memory.LiveBytes() as live:
            _step(nerf, step, reference)
        out[kind] = live.peak
        size = round(nerf_size * cfg.train.ref_scale) if reference else nerf_size
        out[f"{kind}_samples"] = size * size * per_ray
    out["state"] = memory.training_state_bytes(field, nerf.optimizer, nerf.ema.shadow)
    return out


def _step(stage, step, reference):
    stage.before_step(step)
    loss = sum(stage.loss_terms(step, reference, 0.0, 0.0).values())  # priors off: measured apart
    stage.backward_and_step(loss)


def part_nerf(args, models):
    sizes = (16, 24, 32)
    for mode in ("mask", "compact"):
        for full in (True, False):
            rows = {s: nerf_step_peak(s, mode, full, False, models, args.grad_chunk) for s in sizes}
            label = f"nerf {mode:7s} {'all cells occupied' if full else 'after one update'}"
            for kind in ("reference", "novel"):
                (s0, a), (s1, b), (s2, c) = rows.items()
                per = (b[kind] - a[kind]) / (b[f"{kind}_samples"] - a[f"{kind}_samples"])
                fixed = a[kind] - per * a[f"{kind}_samples"]
                pred = fixed + per * c[f"{kind}_samples"]
                print(f"{label} {kind:9s}: " + ", ".join(f"{s} px {r[kind] / MB:.1f} MB" for s, r in rows.items())
                      + f"; law {fixed / MB:.1f} MB + {per:.0f} B x samples; predicts {pred / MB:.1f} MB at "
                      f"{s2} px ({(pred - c[kind]) / c[kind] * 100:+.1f}%)")
            print(f"{label} state (params, optimiser, EMA): {a['state'] / MB:.1f} MB")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("nerf", "priors", "dmtet", "budget"), action="append")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--grad-chunk", type=int, default=0)
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "c123-bench-tiny-models"))
    args = p.parse_args()
    torch.set_num_threads(1)
    models = Path(args.models)
    parts = args.part or ["priors", "nerf", "dmtet", "budget"]
    if "nerf" in parts:
        part_nerf(args, models)


if __name__ == "__main__":
    main()
