"""Matplotlib (Agg, no pyplot state) PNGs: per-case metric strips, detector S^k curves, prior weights, nightly trend."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from c123_pipeline.reports import published as pub
from c123.atomic import write_atomic
from c123_pipeline.reports.runs import Run, all_cases


def _save(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_atomic(path, buf.getvalue())


def slug(text: str) -> str:
    """A file-name-safe form of a method label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def strip_plot(cases: pd.DataFrame, path: Path) -> Path:
    """One panel per metric, one jittered column of per-case values per method; x labels count ok / cases."""
    labels = list(dict.fromkeys(cases["label"]))
    fig = Figure(figsize=(max(6.0, 1.6 * len(labels) * len(pub.METRICS)), 4.5), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for i, metric in enumerate(pub.METRICS):
        ax = fig.add_subplot(1, len(pub.METRICS), i + 1)
        ticks = []
        for x, label in enumerate(labels):
            group = cases[cases["label"] == label]
            ok = group.loc[group["status"] == "ok", metric].astype("float64").dropna()
            ax.scatter(x + rng.uniform(-0.15, 0.15, len(ok)), ok, s=18, alpha=0.8)
            if len(ok):
                ax.hlines(ok.mean(), x - 0.3, x + 0.3, colors="k", linewidth=1)
            ticks.append(f"{label}\n{int((group['status'] == 'ok').sum())} ok / {len(group)}")
        ax.set_xticks(range(len(labels)), ticks, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        ax.set_title(pub.METRIC_LABELS[metric])
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-case metrics (succeeded cases; bar = mean)")
    return _save(fig, path)


def detector_plot(results: dict[str, dict], title: str, path: Path) -> Path:
    """S^k against iteration per case, a dashed line at each case's switch (forced switches hollow)."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for case, result in results.items():
        det = result.get("detector") or {}
        if not det.get("iterations"):
            continue
        (line,) = ax.plot(det["iterations"], det["S"], marker=".", label=case)
        switch = det.get("switch_iteration", result.get("switch_iteration"))
        if switch is not None:
            ax.axvline(switch, color=line.get_color(), linestyle="--", linewidth=1)
            at = np.interp(switch, det["iterations"], det["S"])
            ax.plot([switch], [at], "o", color=line.get_color(), mfc="none" if det.get("forced") else line.get_color())
    ax.set_xlabel("NeRF iteration")
    ax.set_ylabel("S^k (mean CLIP image-text cosine)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def weights_plot(results: dict[str, dict], title: str, path: Path) -> Path:
    """w3D (solid) and w2D (dashed) against iteration per case."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for case, result in results.items():
        w = result.get("weights") or {}
        if not w.get("iterations"):
            continue
        (line,) = ax.plot(w["iterations"], w["w3d"], label=f"{case} w3D")
        ax.plot(w["iterations"], w["w2d"], linestyle="--", color=line.get_color(), label=f"{case} w2D")
    ax.set_xlabel("iteration (NeRF then DMTet)")
    ax.set_ylabel("prior weight")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, ncol=2)
    return _save(fig, path)


def trend_plot(runs: list[Run], path: Path) -> Path:
    """Per run (by creation time), the mean of each metric over succeeded cases, one line per dataset/method."""
    points = []
    for run in runs:
        df = run.per_case[run.per_case["status"] == "ok"]
        keys = ["dataset", "variant", "weight_shape", "preset"]
        for key, group in df.groupby(keys, sort=True):
            points.append({"when": run.created_at, "series": " · ".join(map(str, key)),
                           **{m: group[m].astype("float64").mean() for m in pub.METRICS}})
    table = pd.DataFrame(points, columns=["when", "series", *pub.METRICS])
    fig = Figure(figsize=(12.0, 3.8), layout="constrained")
    for i, metric in enumerate(pub.METRICS):
        ax = fig.add_subplot(1, len(pub.METRICS), i + 1)
        for series, group in table.groupby("series", sort=True):
            group = group.sort_values("when")
            ax.plot(group["when"], group[metric], marker="o", label=series)
        ax.set_title(pub.METRIC_LABELS[metric])
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.grid(alpha=0.3)
    if len(table):
        fig.axes[0].legend(fontsize=7)
    fig.suptitle("Nightly trend: mean per run")
    return _save(fig, path)


def make_plots(runs: list[Run], out_dir: Path, trend_runs: list[Run] | None = None) -> dict[str, Path]:
    """All plots under out_dir/plots; keys name them for the HTML page."""
    plots_dir = Path(out_dir) / "plots"
    cases = all_cases(runs)
    made = {"per-case metrics": strip_plot(cases, plots_dir / "per_case_metrics.png")} if len(cases) else {}
    by_path = {r.run_id: r for r in runs}
    for label, group in cases.groupby("label", sort=False):
        results = {}
        for row in group.sort_values(["case", "seed"]).itertuples():
            result = by_path[row.run_id].result(row.case_dir)
            if result:
                results.setdefault(f"{row.case} s{row.seed}", result)
        if any((r.get("detector") or {}).get("iterations") for r in results.values()):
            made[f"detector {label}"] = detector_plot(results, f"Boundary detector: {label}",
                                                      plots_dir / f"detector_{slug(label)}.png")
        if any((r.get("weights") or {}).get("iterations") for r in results.values()):
            made[f"weights {label}"] = weights_plot(results, f"Prior weights: {label}",
                                                    plots_dir / f"weights_{slug(label)}.png")
    trend_runs = trend_runs or runs
    if len(trend_runs) >= 2:  # one run is one point per series: nothing to show a trend of
        made["trend"] = trend_plot(trend_runs, plots_dir / "trend.png")
    return made
