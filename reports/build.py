"""build_report: run folders -> tables.md/.tex, plots, index.html and (given a baseline) verdict.json/.md; the CLI."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from c123.cli import OneLineParser
from c123.errors import C123Error
from c123.outputs import check_output_folder
from c123_pipeline.reports import html, plots, regression, tables
from c123.atomic import write_atomic
from c123_pipeline.reports.runs import all_cases, check_comparable, load_run, load_runs, run_datasets


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


def build_report(run_dirs, out_dir, baseline=None, thresholds=None) -> ReportPaths:
    """Report on the runs in `run_dirs`; with `baseline`, judge the LAST run given against it."""
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
    # The baseline joins the nightly trend (it is an earlier point on it), but not the tables.
    trend = runs + ([base] if base is not None and base.run_id not in {r.run_id for r in runs} else [])
    made = plots.make_plots(runs, out, trend_runs=trend)
    verdict = regression.compare(runs[-1].per_case, base.per_case, thresholds) if base is not None else None
    paths = ReportPaths(out, write_atomic(out / "tables.md", md), write_atomic(out / "tables.tex", tex),
                        out / "index.html", made, verdict=verdict)
    if verdict is not None:
        paths.verdict_json, paths.verdict_md = verdict.save(out)
    write_atomic(paths.index_html, html.render_page(runs, built, made, out, verdict))
    return paths


def parser() -> argparse.ArgumentParser:
    """`c123 report RUN_DIR [RUN_DIR ...] [--baseline RUN_DIR] [--out DIR] [--threshold metric=value ...]`."""
    p = OneLineParser(prog="c123 report", description="Tables, plots, HTML and a regression verdict "
                                "from benchmark run folders.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="benchmark run folders (the last is judged)")
    p.add_argument("--baseline", metavar="RUN_DIR", help="compare the last RUN_DIR with this run")
    p.add_argument("--out", metavar="DIR", help="output folder (default: LAST_RUN_DIR/report)")
    p.add_argument("--threshold", action="extend", nargs="+", default=[], metavar="METRIC=VALUE",
                   help="allowed worsening, e.g. psnr=0.5 lpips=0.01 clip_similarity=0.01 new_failures=0")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry: 0 when the report is written and nothing regressed, 1 on a regression, 2 on a usage error."""
    args = parser().parse_args(argv)
    try:
        paths = build_report(args.run_dirs, args.out or Path(args.run_dirs[-1]) / "report", args.baseline,
                             regression.parse_thresholds(args.threshold))
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
