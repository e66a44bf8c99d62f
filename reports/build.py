"""build_report: run folders -> tables.md/.tex, plots, index.html and (given a baseline) verdict.json/.md; the CLI."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

from c123.cli import OneLineParser, count
from c123.errors import C123Error
import pandas as pd

from c123.outputs import check_output_folder
from c123_pipeline.reports import html, plots, regression, tables
from c123.atomic import write_atomic
from c123_pipeline.reports.drift import Reference, judge
from c123_pipeline.reports.history import from_runs, load_history
from c123_pipeline.reports.runs import Run, all_cases, check_comparable, load_run, load_runs, run_datasets


log = logging.getLogger(__name__)


@dataclass
class ReportPaths:
    """What build_report wrote."""

    out_dir: Path
    tables_md: Path
    tables_tex: Path
    index_html: Path
    plots: dict[str, Path] = field(default_factory=dict)
    verdict_json: Path | None = None
    verdict_md: Path | None = None
    verdict: regression.Verdict | None = None


def trend_history(runs: list[Run], base: Run | None, runs_root=None) -> pd.DataFrame:
    """The rows of every run on the nightly trend: with `runs_root`, each finished run of the judged run's
    dataset and preset there up to it (reports.history), plus the given runs; else the given runs and baseline."""
    given = from_runs(runs + ([base] if base is not None else []))
    if runs_root is None:
        return given.drop_duplicates(["run_id", "case", "variant", "weight_shape", "seed"])
    last = runs[-1]
    dataset = str(last.info.get("dataset") or last.per_case["dataset"].iloc[0])
    preset = str(last.info.get("preset") or last.per_case["preset"].iloc[0])
    # a damaged sibling run leaves the trend (with a warning), it does not stop this run's report
    found = load_history(runs_root, dataset, preset, on_unreadable=lambda msg: log.warning(f"trend: {msg}"))
    found = found[found["run_time"] <= last.created_at]
    rows = pd.concat([found, given[~given["run_id"].isin(found["run_id"])]], ignore_index=True)
    return rows.sort_values(["run_time", "run_id"], kind="stable").reset_index(drop=True)


def build_report(run_dirs, out_dir, baseline=None, thresholds=None, history=None,
                 reference: Reference | None = None) -> ReportPaths:
    """Report on the runs in `run_dirs`; with `baseline`, judge the LAST run given against it. `history`: the
    runs folder (local or URL) whose earlier runs of the same dataset and preset make the nightly trend; with
    `reference` too, the last run is also judged against that history's reference window (reports/drift.py)."""
    runs = load_runs(run_dirs)
    if not runs:
        raise C123Error("no run folder given: pass at least one benchmark run folder")
    check_output_folder(out_dir)
    out = Path(out_dir).resolve()
    cases = all_cases(runs)
    built = tables.build_tables(cases)
    md = "\n".join(tables.to_markdown(t) for t in built)
    tex = "\n".join(tables.to_latex(t) for t in built)
    base = load_run(baseline) if baseline is not None else None
    if base is not None:  # as `c123 evaluate --baseline` checks it (tasks/report.py check_baseline)
        check_comparable(base, baseline, run_datasets(runs[-1]), runs[-1].per_case["case"].astype(str).unique())
    # The baseline and the runs folder's earlier runs join the nightly trend, but not the tables.
    trend = trend_history(runs, base, history)
    made = plots.make_plots(runs, out, history=trend)
    verdict = judge(runs[-1].per_case, base.per_case if base is not None else None,
                    trend if history is not None else None, thresholds, reference)
    paths = ReportPaths(out, write_atomic(out / "tables.md", md), write_atomic(out / "tables.tex", tex),
                        out / "index.html", made, verdict=verdict)
    if verdict is not None:
        paths.verdict_json, paths.verdict_md = verdict.save(out)
    write_atomic(paths.index_html, html.render_page(runs, built, made, out, verdict, trend))
    return paths


def parser() -> argparse.ArgumentParser:
    """`c123 report RUN_DIR [RUN_DIR ...] [--baseline RUN_DIR] [--out DIR] [--threshold metric=value ...]`."""
    p = OneLineParser(prog="c123 report", description="Tables, plots, HTML and a regression verdict "
                                "from benchmark run folders.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="benchmark run folders (the last is judged)")
    p.add_argument("--baseline", metavar="RUN_DIR", help="compare the last RUN_DIR with this run")
    p.add_argument("--out", metavar="DIR", help="output folder (default: LAST_RUN_DIR/report)")
    p.add_argument("--history", metavar="RUNS", help="runs folder (or URL) whose earlier runs of the same dataset "
                   "and preset make the nightly trend (default: the given runs and the baseline only)")
    p.add_argument("--drift-window", type=count(1), metavar="N", help="also judge the last RUN_DIR against the "
                   "median of the last N good runs in --history (slow drift)")
    p.add_argument("--golden", metavar="RUN_ID", help="also judge the last RUN_DIR against this pinned run of "
                   "--history instead of a window")
    p.add_argument("--threshold", action="extend", nargs="+", default=[], metavar="METRIC=VALUE",
                   help="allowed worsening, e.g. psnr=0.5 lpips=0.01 clip_similarity=0.01 new_failures=0")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when the report is written and nothing regressed, 1 on a regression, 2 on a usage error."""
    try:
        args = parser().parse_args(argv)
        drift = args.drift_window is not None or args.golden is not None
        if drift and args.history is None:
            raise C123Error("--drift-window and --golden judge against a history: pass --history RUNS too")
        reference = Reference(args.drift_window or 5, args.golden) if drift else None
        paths = build_report(args.run_dirs, args.out or Path(args.run_dirs[-1]) / "report", args.baseline,
                             regression.parse_thresholds(args.threshold), args.history, reference)
    except C123Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"report: {paths.index_html}")
    if paths.verdict is not None:
        print(paths.verdict.markdown)
        return 1 if paths.verdict.regressed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
