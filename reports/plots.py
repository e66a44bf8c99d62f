"""Matplotlib (Agg, no pyplot state) PNGs: per-case metric strips, detector S^k curves and prior weights per method
(c123.viewer.curves draws those), nightly trend."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from c123.viewer.curves import detector_plot, save_figure, weights_plot
from c123_pipeline.reports import published as pub
from c123_pipeline.reports.runs import Run, all_cases


def slug(text: str) -> str:
    """A file-name-safe form of a method label."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "run"


def strip_plot(cases: pd.DataFrame, path: Path, metrics=pub.METRICS,
               title: str = "Per-case metrics (succeeded cases; bar = mean)") -> Path:
    """One panel per metric, one jittered column of per-case values per method; x labels count ok / cases."""
    labels = list(dict.fromkeys(cases["label"]))
    fig = Figure(figsize=(max(6.0, 1.6 * len(labels) * len(metrics)), 4.5), layout="constrained")
    rng = np.random.default_rng(0)  # fixed jitter: the same data gives the same picture
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
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
        ax.set_title(pub.metric_label(metric))
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def seed_plot(cases: pd.DataFrame, path: Path, metrics: list[str]) -> Path:
    """One panel per metric: per case (x), each seed's value as a point, one colour per method."""
    ok = cases[cases["status"] == "ok"]
    case_names = list(dict.fromkeys(ok["dataset"].astype(str) + "/" + ok["case"].astype(str)))
    fig = Figure(figsize=(max(6.0, 0.6 * len(case_names) * len(metrics)), 4.0), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        for label, group in ok.groupby("label", sort=False):
            x = [case_names.index(f"{d}/{c}") for d, c in zip(group["dataset"], group["case"])]
            ax.scatter(x, group[metric].astype("float64"), s=16, alpha=0.8, label=str(label))
        ax.set_xticks(range(len(case_names)), case_names, rotation=40, ha="right", fontsize=7)
        ax.set_title(pub.metric_label(metric))
        ax.grid(axis="y", alpha=0.3)
    if metrics:
        fig.axes[0].legend(fontsize=6)
    fig.suptitle("Per seed: one point per seed and case")
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def make_plots(runs: list[Run], out_dir: Path, trend_runs: list[Run] | None = None) -> dict[str, Path]:
    """All plots under out_dir/plots; keys name them for the HTML page."""
    plots_dir = Path(out_dir) / "plots"
    cases = all_cases(runs)
    made = {"per-case metrics": strip_plot(cases, plots_dir / "per_case_metrics.png")} if len(cases) else {}
    truth = [m for m in pub.GROUND_TRUTH_METRICS if m in cases and cases[m].notna().any()]
    if truth:
        with_truth = cases[cases[truth].notna().any(axis=1)]
        made["ground truth"] = strip_plot(with_truth, plots_dir / "ground_truth.png", truth,
                                          "Against ground truth: per-case values (succeeded cases; bar = mean)")
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
    if len(cases) and (cases.groupby(["label", "dataset", "case"])["seed"].nunique() >= 2).any():
        made["seeds"] = seed_plot(cases, plots_dir / "seeds.png", [m for m in pub.HIGHER_IS_BETTER
                                                                   if m in cases and cases[m].notna().any()])
    trend_runs = trend_runs or runs
    if len(trend_runs) >= 2:  # one run is one point per series: nothing to show a trend of
        made["trend"] = trend_plot(trend_runs, plots_dir / "trend.png")
    return made
