"""The report task: reports.build.build_report over a finished run, plus the regression verdict.

With a baseline, the verdict is published as a Prefect markdown artifact (key `regression-verdict`); the
flow marks its run failed on a regression when asked to (the nightly deployment does).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from c123.errors import C123Error

ARTIFACT_KEY = "regression-verdict"


def find_latest_baseline(run_dir: str | Path, dataset: str, preset: str) -> Path | None:
    """The newest other run folder beside `run_dir` with a per_case.parquet and the same dataset and preset."""
    run = Path(run_dir).resolve()
    best, best_time = None, ""
    for other in run.parent.iterdir() if run.parent.is_dir() else []:
        if other.resolve() == run or not (other / "per_case.parquet").is_file():
            continue
        try:
            info = json.loads((other / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if info.get("dataset") == dataset and info.get("preset") == preset and str(info.get("created_at", "")) > best_time:
            best, best_time = other, str(info.get("created_at", ""))
    return best


@task(name="report", cache_policy=NO_CACHE)
def report_task(run_dir: str, baseline: str | None = None, thresholds: dict | list | None = None,
                publish_artifact: bool = True) -> dict:
    """Tables, plots, HTML (and with a baseline: verdict.json/.md) under RUN/report."""
    from reports.build import build_report

    if baseline is not None and not (Path(baseline) / "per_case.parquet").is_file():
        raise C123Error(f"baseline {baseline} has no per_case.parquet: pass a finished benchmark run folder")
    paths = build_report([run_dir], Path(run_dir) / "report", baseline=baseline, thresholds=thresholds)
    out = {"index_html": str(paths.index_html), "tables_md": str(paths.tables_md),
           "tables_tex": str(paths.tables_tex), "plots": {k: str(v) for k, v in (paths.plots or {}).items()},
           "baseline": str(baseline) if baseline else None, "regressed": False, "verdict_md": None,
           "verdict_markdown": None}
    if paths.verdict is not None:
        out.update(regressed=bool(paths.verdict.regressed), verdict_md=str(paths.verdict_md),
                   verdict_markdown=paths.verdict.markdown)
        if publish_artifact:
            publish_verdict(paths.verdict.markdown)
    return out


def publish_verdict(markdown: str) -> None:
    """The verdict as a Prefect markdown artifact of the current run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                             description="Regression verdict of this benchmark run against its baseline")
