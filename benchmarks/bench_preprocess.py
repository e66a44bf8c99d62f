"""Wall time of preprocessing a plain photo on CPU with the tiny models: caption (BLIP-2), cut-out (CLIPSeg),
depth (DPT), recentring and writing the cache folder, then the cached rerun (no model runs).

Each C10 JPEG is preprocessed cold (empty cache) and then again from the cache; the tiny models are written
first (not timed). Times include loading each model from disk, which dominates with tiny models; with the
real ones, model loading and inference both grow (BLIP-2 OPT-2.7b alone is ~15 GB in float32).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_preprocess.py [--images 12 07] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from c123.config import tiny
from c123.preprocess import prepare_input
from c123.priors.tiny import write_tiny_models
from c123_pipeline.datasets.registry import default_data_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="*", help="C10 JPEG stems (default: all)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    c10 = default_data_root() / "c10"
    photos = [c10 / f"{s}.jpg" for s in args.images] if args.images else sorted(c10.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["C123_CACHE"] = str(Path(tmp) / "cache")
        cfg = tiny(str(Path(tmp) / "models"))
        write_tiny_models(Path(tmp) / "models")
        prepare_input(photos[0], cfg=cfg, case_id="warm-up")  # imports and first-call costs, not timed
        os.environ["C123_CACHE"] = str(Path(tmp) / "cache-timed")
        cold, warm = [], []
        print(f"{'image':>14} {'pixels':>11} {'cold s':>7} {'cached s':>9}")
        for photo in photos:
            tic = time.perf_counter()
            first = prepare_input(photo, cfg=cfg)
            cold.append(time.perf_counter() - tic)
            tic = time.perf_counter()
            again = prepare_input(photo, cfg=cfg)
            warm.append(time.perf_counter() - tic)
            assert not first.preprocessing.cached and again.preprocessing.cached
            size = "x".join(map(str, first.rgba.shape[:2]))
            print(f"{photo.name:>14} {size:>11} {cold[-1]:7.2f} {warm[-1]:9.3f}")
    print(f"median per image: cold {statistics.median(cold):.2f} s, cached {statistics.median(warm):.3f} s "
          f"({len(photos)} images, {args.threads} threads, tiny models, CPU)")


if __name__ == "__main__":
    main()
