"""Matplotlib (Agg, no pyplot state) PNGs: per-case metric strips, detector S^k curves and prior weights per method
(c123.viewer.curves draws those), nightly trend."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from c123.viewer.curves import detector_plot, save_figure, weights_plot
from c123_pipeline.reports import published as pub
from c123_pipeline.reports.history import from_runs
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


TREND_SERIES = ["dataset", "variant", "weight_shape", "preset"]
"""One line of the trend per method."""


def trend_points(history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per run and method: the mean of each metric over succeeded cases and seeds, and its spread (standard
    deviation over those cases and seeds), with the run's time and code version."""
    ok = history[history["status"] == "ok"]
    rows = []
    for (when, run_id, *key), group in ok.groupby(["run_time", "run_id", *TREND_SERIES], sort=True):
        row = {"when": when, "run_id": run_id, "series": " · ".join(map(str, key))}
        for m in metrics:
            values = group[m].astype("float64").dropna() if m in group else pd.Series(dtype="float64")
            row[m], row[f"{m}_sd"] = (values.mean(), values.std(ddof=0)) if len(values) else (np.nan, np.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=["when", "run_id", "series", *metrics, *(f"{m}_sd" for m in metrics)])


def code_changes(history: pd.DataFrame) -> list[tuple[pd.Timestamp, str]]:
    """(run time, new code version) of every run whose code version differs from the run before it."""
    per_run = history.sort_values("run_time", kind="stable").drop_duplicates("run_id")
    versions = per_run["code_version"].astype(object).where(per_run["code_version"].notna(), "unknown") \
        if "code_version" in per_run else pd.Series("unknown", index=per_run.index)
    changes, last = [], None
    for when, version in zip(per_run["run_time"], versions):
        if last is not None and version != last:
            changes.append((when, str(version)))
        last = version
    return changes


def trend_plot(history: pd.DataFrame, path: Path) -> Path:
    """Per metric measured in the history: the value per night (mean over succeeded cases and seeds) of each
    method, the spread over cases and seeds as a band, and a dotted line where the code version changed."""
    metrics = [m for m in (*pub.METRICS, *pub.GROUND_TRUTH_METRICS)
               if m in history and history[m].astype("float64").notna().any()]
    table = trend_points(history, metrics)
    cols = min(3, max(1, len(metrics)))
    rows = -(-max(1, len(metrics)) // cols)
    fig = Figure(figsize=(4.6 * cols, 3.6 * rows), layout="constrained")
    changes = code_changes(history)
    first = None
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1, sharex=first)  # one time axis: the nights line up across panels
        first = first or ax
        for series, group in table.groupby("series", sort=True):
            group = group.sort_values("when")
            x, y, sd = group["when"].dt.tz_localize(None), group[metric], group[f"{metric}_sd"]
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=series)
            ax.fill_between(x, y - sd, y + sd, color=line.get_color(), alpha=0.18, linewidth=0)
        for when, version in changes:
            ax.axvline(pd.Timestamp(when).tz_localize(None), color="0.3", linestyle=":", linewidth=1)
            ax.annotate(f"code {version}", (pd.Timestamp(when).tz_localize(None), 1.0), xycoords=("data", "axes fraction"),
                        rotation=90, va="top", ha="right", fontsize=6, color="0.3")
        ax.set_title(pub.metric_label(metric))
        locator = mdates.AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3)
    if len(table) and fig.axes:
        fig.axes[0].legend(fontsize=7)
    fig.suptitle(f"Nightly trend: {table['run_id'].nunique()} runs, mean per run (band: ± 1 s.d. over cases and "
                 "seeds; dotted: code version changed)")
    return save_figure(fig, path)


def make_plots(runs: list[Run], out_dir: Path, history: pd.DataFrame | None = None) -> dict[str, Path]:
    """All plots under out_dir/plots; keys name them for the HTML page. `history`: the rows of every run on the
    nightly trend (reports.history), default the runs' own."""
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
    history = from_runs(runs) if history is None else history
    if history["run_id"].nunique() >= 2:  # one run is one point per series: nothing to show a trend of
        made["trend"] = trend_plot(history, plots_dir / "trend.png")
    return made
