"""The verification benchmark (the synthetic scenes reconstructed with the oracle as the 3D prior, preset
`verify`): what its numbers mean, the thresholds of its CPU nightly, and the summary `make demo` prints.

`python -m c123_pipeline.reports.verify RUN_DIR` prints, per case, the metrics against the true object and
what they mean.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from c123.errors import C123Error
from c123_pipeline.reports.runs import load_run

GROUND_TRUTH_LABELS = {"novel_psnr": "novel-view PSNR (dB) ↑", "unseen_psnr": "unseen-side PSNR (dB) ↑",
                       "novel_lpips": "novel-view LPIPS ↓", "chamfer_sq": "squared Chamfer ↓", "fscore": "F-score@0.01 ↑",
                       "silhouette_iou": "silhouette IoU ↑", "sd_chamfer": "Chamfer (SyncDreamer) ↓",
                       "sd_volume_iou": "volume IoU ↑", "sd_psnr": "16-view PSNR (dB) ↑", "sd_ssim": "16-view SSIM ↑",
                       "sd_lpips": "16-view LPIPS-VGG ↓"}
"""The per_case columns measured against the known object (c123.metrics.GROUND_TRUTH_METRICS), as labelled."""

VERIFY_THRESHOLDS = {"novel_psnr": 0.5, "unseen_psnr": 0.5, "silhouette_iou": 0.01, "fscore": 0.02,
                     "chamfer_sq": 1e-4, "sd_chamfer": 0.005, "sd_volume_iou": 0.02, "sd_psnr": 0.5, "sd_ssim": 0.01,
                     "sd_lpips": 0.02, "new_failures": 0}
"""Allowed worsening of the verify nightly (reports.regression's units: dB, IoU, F-score, squared world units).
The run is deterministic (same code + seed -> the same numbers), so equal code moves nothing; the values sit
well below what a broken camera convention, an untrained DMTet stage or a halved learning rate cost
(docs/METHOD.md section 6 lists the measured drops)."""

MEANING = """\
What this was: each synthetic scene (procedural objects with known geometry and colour) was reconstructed
from ONE rendered reference view, with the ORACLE answering where Zero-1-to-3 would: asked for the view at
a relative camera, it renders the true object there. The oracle stands in for the 3D prior only; cameras,
the Zero-1-to-3 camera vector, the NeRF stage, DMTet, the export and the metrics are the real code, so
the numbers have a right answer and a broken part shows. It says nothing about the quality of the real
priors: for that, run the `paper` preset with the real weights (`c123 evaluate c10 --preset paper`).
The numbers: PSNR of the 8 orbit views against the true views (novel) and of those at least 90 degrees from
the reference (unseen sides, never in the input); Chamfer² (squared distance, world units, lower is better)
and F-score at 0.01 (share of surface points within 1% of the object box of the other surface) of the
exported mesh against the true surface; silhouette IoU of the orbit views. LPIPS uses a seeded random
backbone when the AlexNet weights are not on this machine: comparable between runs, not perceptual.
Under --protocol syncdreamer (make demo), the sd_* columns are SyncDreamer's GSO protocol on the same scenes,
in the published tables' units: Chamfer (mean unsquared distance both ways, halved, between point clouds from
16 depth maps, the true object scaled to a largest extent of 1), volume IoU (64^3 grid) and PSNR/SSIM/
LPIPS-VGG of 16 orbit views at the reference elevation (here the equator)."""


def summary_lines(run_dir: str | Path) -> list[str]:
    """One line per case with its ground-truth metrics, then what was run and what the numbers mean."""
    run = load_run(run_dir)
    rows = run.per_case.sort_values(["case", "variant", "seed"])
    width = max([4, *(len(str(c)) for c in rows["case"])])
    sd = bool((rows["protocol"] == "syncdreamer").any()) if "protocol" in rows else False
    head = f"{'case':<{width}}  novel PSNR  unseen PSNR  LPIPS  Chamfer²   F-score  IoU" + (
        "    sd Chamfer  vol IoU  sd PSNR  SSIM   LPIPS-VGG" if sd else "")
    lines = [f"verification run {run.run_id} ({run.info.get('preset', '?')} preset): {run.path}", head]
    for row in rows.itertuples():
        if row.status != "ok":
            lines.append(f"{row.case:<{width}}  failed: {row.error}")
            continue
        cells = [_fmt(getattr(row, m, math.nan), spec) for m, spec in
                 (("novel_psnr", "10.2f"), ("unseen_psnr", "11.2f"), ("novel_lpips", "5.3f"), ("chamfer_sq", "9.2e"),
                  ("fscore", "7.3f"), ("silhouette_iou", "5.3f"))]
        if sd:
            cells += [_fmt(getattr(row, m, math.nan), spec) for m, spec in
                      (("sd_chamfer", "10.4f"), ("sd_volume_iou", "7.3f"), ("sd_psnr", "7.2f"), ("sd_ssim", "5.3f"),
                       ("sd_lpips", "9.3f"))]
        lines.append(f"{row.case:<{width}}  " + "  ".join(cells))
    lines += [f"report (true views beside the reconstructed ones): {run.path / 'report' / 'index.html'}", "",
              MEANING]
    return lines


def _fmt(value, spec: str) -> str:
    width = int(spec.split(".")[0])
    return f"{'NaN':>{width}}" if value is None or (isinstance(value, float) and math.isnan(value)) else \
        format(float(value), spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m c123_pipeline.reports.verify",
                                description="Per-case ground-truth metrics of a verification run, explained.")
    p.add_argument("run_dir", help="a finished run folder of `c123 evaluate synthetic --preset verify`")
    args = p.parse_args(argv)
    try:
        print("\n".join(summary_lines(args.run_dir)))
    except C123Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
