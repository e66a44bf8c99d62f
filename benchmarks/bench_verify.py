"""Wall time of the verification benchmark (`make demo`): the synthetic scenes with the oracle prior, preset
`verify`, through the benchmark flow.

    .venv/bin/python benchmarks/bench_verify.py [--cases toy chair] [--actors 2] [--out DIR] [--protocol syncdreamer]

Prints the machine's load before and after (the figures mean little on a shared machine without it), the
flow's wall time, and per case the stage seconds (NeRF, DMTet, export) and the metrics against the true
object, so a change in speed can be read beside a change in quality. `--protocol syncdreamer` is what `make demo`
runs (16 orbit views, SyncDreamer's GSO metrics); the default `c123` protocol (8 views) is the cheaper one, so
the two runs' wall times give the protocol's cost per case.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", help="synthetic case ids (default: all)")
    p.add_argument("--actors", type=int, default=None, help="Ray actors (default: one per CPU)")
    p.add_argument("--out", help="run folder (default: a fresh temporary one)")
    p.add_argument("--protocol", default="c123", help="metric protocol: c123 (default) or syncdreamer (make demo's)")
    args = p.parse_args(argv)

    from c123.provenance import offline_defaults

    offline_defaults()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark

    out = Path(args.out or tempfile.mkdtemp(prefix="bench-verify-")) / "run"
    print(f"load before: {os.getloadavg()[0]:.1f} (1-min average) on {os.cpu_count()} CPUs")
    t0 = time.perf_counter()
    summary = benchmark(dataset="synthetic", preset="verify", cases=args.cases, out=str(out),
                        num_actors=args.actors, protocol=args.protocol)
    wall = time.perf_counter() - t0
    print(f"load after: {os.getloadavg()[0]:.1f}; protocol {args.protocol}: flow wall {wall:.0f} s for "
          f"{summary['computed']} computed cases")
    columns = ["case", "seconds_nerf", "seconds_dmtet", "seconds_export", "seconds_total", "novel_psnr",
               "unseen_psnr", "chamfer_sq", "fscore", "silhouette_iou"]
    if args.protocol == "syncdreamer":
        columns += ["sd_chamfer", "sd_volume_iou", "sd_psnr", "sd_ssim", "sd_lpips"]
    with pd.option_context("display.width", 200, "display.precision", 4):
        print(pd.read_parquet(summary["per_case"])[columns].to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
