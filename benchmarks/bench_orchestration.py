"""Orchestration overhead of the benchmark flow: flow wall time vs the per-case compute time on the actors.

    .venv/bin/python benchmarks/bench_orchestration.py [--dataset realfusion15] [--actors 2] [--set k=v ...]

Runs the `benchmark` flow (the tiny preset as shipped; `--quick` cuts it to a few dozen iterations) into a
fresh run folder on a fresh local Ray cluster, as `c123 evaluate` does (Ray and the actors started while
Prefect's API starts; `--cold`: by the flow itself, as in a served deployment's run), then prints
- compute: the sum over cases of the seconds each case spent in its actor (loading the input, the
  reconstruction; the priors are loaded when the actor starts), and ideal = compute / actors (perfect packing);
- flow wall: from the flow's first line to its summary (Ray start, actors, dispatch, metrics, Parquet,
  report), and the process wall including Prefect's temporary API start;
- overhead = flow wall / ideal - 1 (target < 10%).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH_SET = ["train.nerf_iters=24", "train.dmtet_iters=8", "schedule.check_start=6", "schedule.check_end=18",
             "schedule.check_interval=3", "schedule.fixed_switch_step=12", "train.checkpoint_every=8",
             "train.eval_views=8", "train.video_frames=8", "train.eval_size=64"]


def packing_bound(seconds: list[float], actors: int) -> float:
    """Makespan of the longest-processing-time-first schedule (within 4/3 of optimal; exact for equal jobs)."""
    loads = [0.0] * max(actors, 1)
    for s in sorted(seconds, reverse=True):
        loads[loads.index(min(loads))] += s
    return max(max(loads), sum(seconds) / max(actors, 1))


def timeline(spans: list, wall: float) -> list[str]:
    """Per actor slot: when its first case started, idle gaps between its cases, its last case (which has the
    idle actors' threads once no case waits), and its idle tail."""
    lines = []
    for slot in sorted({s[0] for s in spans}, key=str):
        mine = sorted((a, b) for sl, a, b in spans if sl == slot)
        gaps = sum(max(0.0, mine[i + 1][0] - mine[i][1]) for i in range(len(mine) - 1))
        lines.append(f"actor {slot}: {len(mine)} cases, first start {mine[0][0]:.1f} s, busy "
                     f"{sum(b - a for a, b in mine):.1f} s, gaps between cases {gaps:.2f} s, "
                     f"last case {mine[-1][1] - mine[-1][0]:.1f} s, last end {mine[-1][1]:.1f} s, "
                     f"idle tail {wall - mine[-1][1]:.1f} s")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="realfusion15")
    p.add_argument("--cases", type=int, default=15, help="first N cases (default 15)")
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                   help="config overrides of the tiny preset")
    p.add_argument("--quick", action="store_true", help="cut the tiny preset down (BENCH_SET) for a fast check")
    p.add_argument("--out", help="run folder (default: a fresh temporary folder)")
    p.add_argument("--cold", action="store_true", help="the flow starts Ray and the actors itself (a served "
                   "deployment's run), instead of `c123 evaluate`'s start ahead of Prefect's")
    args = p.parse_args(argv)

    scratch = Path(tempfile.mkdtemp(prefix="c123-bench-orch-"))
    os.environ.setdefault("PREFECT_HOME", str(scratch / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("C123_RAY_LOG_TO_DRIVER", "0")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    t_process = time.perf_counter()
    from c123.provenance import offline_defaults
    from c123_pipeline.datasets.registry import load_dataset
    from c123_pipeline.flows.benchmark import benchmark, summary_of
    from c123_pipeline.flows.spec import BenchmarkSpec, check_spec
    from c123_pipeline.flows.evaluate import run_started_ahead

    offline_defaults()
    cases = [c.id for c in load_dataset(args.dataset).cases][: args.cases]
    spec = BenchmarkSpec(dataset=args.dataset, preset="tiny", cases=cases, out=args.out or str(scratch / "run"),
                         overrides=(BENCH_SET if args.quick else []) + args.overrides, num_actors=args.actors)
    if args.cold:  # as a served deployment's run: the flow starts Ray and the actors itself
        state = benchmark(**dataclasses.asdict(spec), return_state=True)
    else:  # as `c123 evaluate`: checked, then Ray and the actors started while Prefect's API starts
        state = run_started_ahead(spec, check_spec(spec, logging.getLogger("bench")))
    summary = summary_of(state)
    process_wall = time.perf_counter() - t_process

    import pandas as pd

    per_case = pd.read_parquet(summary["per_case"])
    compute, wall, n = summary["compute_seconds"], summary["wall_seconds"], summary["actors"]
    ideal = compute / max(n, 1)
    print(f"dataset {args.dataset}: {summary['cases']} cases ({summary['ok']} ok, {summary['failed']} failed) "
          f"on {n} CPU actors, {'started ahead while Prefect started' if summary['started_ahead'] else 'started by the flow'}")
    print(f"reconstruction stages (sum nerf+dmtet+export): {per_case['seconds_total'].sum():.1f} s")
    print(f"per-case compute in actors (sum):               {compute:.1f} s  -> ideal wall {ideal:.1f} s")
    print(f"flow wall:                                      {wall:.1f} s")
    print(f"process wall (incl. Prefect API start):         {process_wall:.1f} s")
    print(f"orchestration overhead (flow wall / ideal - 1): {100 * (wall / ideal - 1):.1f} %")
    packed = packing_bound(summary["case_seconds"], n)
    print(f"packing bound (best schedule of these whole cases on {n} actors): {packed:.1f} s -> overhead beyond "
          f"it {100 * (wall / packed - 1):.1f} %")
    t = summary["timings"]
    print("flow phases (s from flow start): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()))
    for line in timeline(summary.get("case_spans") or [], wall):
        print(line)
    print(f"run folder: {summary['run_dir']}")
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
