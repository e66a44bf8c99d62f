"""The report task: reports.build.build_report over a finished run, plus the regression verdict.

With a baseline, the verdict is published as a Prefect markdown artifact (key `regression-verdict`); the
flow marks its run failed on a regression when asked to (the nightly deployment does).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from c123.errors import C123Error
from c123_pipeline.tasks import storage

ARTIFACT_KEY = "regression-verdict"
REPORT_READS_NOT = ("checkpoints", "video", "mesh")
"""Case subfolders the report does not read (not downloaded for a run folder on object storage)."""
TABLES_ONLY = ("cases", "report")
"""What a baseline run folder's copy leaves out (only run.json and the Parquet files are read)."""


def find_latest_baseline(run_dir: storage.Location, dataset: str, preset: str) -> storage.Location | None:
    """The newest other run folder beside `run_dir` with a per_case.parquet and the same dataset and preset."""
    from c123_pipeline.reports.history import run_folders

    run = storage.location(run_dir)
    best, best_time = None, ""
    # an unreadable run.json is no candidate (the history's reader reports it; here it is only skipped)
    for other, info in run_folders(storage.parent(run), dataset, preset, on_unreadable=lambda _: None):
        if storage.location(other) == run or info.get("dataset") != dataset or info.get("preset") != preset:
            continue
        if str(info.get("created_at", "")) > best_time:
            best, best_time = other, str(info.get("created_at", ""))
    return best


def check_baseline(baseline: str | None, run_dir: storage.Location, dataset: str, preset: str,
                   case_ids: list[str], log=None) -> storage.Location | None:
    """The baseline run folder to judge against, checked before any compute: readable, of the same dataset,
    sharing at least one case with this run (else the verdict would compare nothing and say "OK").
    'latest' is the newest earlier run of the dataset and preset beside `run_dir` (None when there is none)."""
    from c123_pipeline.reports.runs import check_comparable, load_run

    if baseline is None:
        return None
    if baseline == "latest":
        found = find_latest_baseline(run_dir, dataset, preset)
        if found is None:
            if log is not None:
                log.warning("baseline 'latest': no earlier finished run of this dataset and preset; no verdict")
            return None
        baseline = str(found)
    path = storage.location(baseline)
    if path == storage.location(run_dir):
        raise C123Error(f"baseline {path} is this run's own folder: pass an earlier run folder")
    with storage.local_copy(path, skip=TABLES_ONLY) as local:
        base = load_run(local)
    check_comparable(base, path, {dataset}, case_ids)
    return path


def check_golden(golden: str | None, run_dir: storage.Location, dataset: str, preset: str) -> None:
    """A pinned golden run must be a finished run of the dataset and preset beside `run_dir` (before compute)."""
    from c123_pipeline.reports.history import run_folders

    if golden is None:
        return
    runs = storage.parent(storage.location(run_dir))
    ids = [str(info.get("run_id") or str(folder).rstrip("/").rsplit("/", 1)[-1])
           for folder, info in run_folders(runs, dataset, preset)]
    if golden not in ids:
        raise C123Error(f"golden run {golden} is not a finished {dataset} {preset} run in {runs}: pass one of "
                        f"{', '.join(ids[-5:]) or '(none yet)'} (c123 history {runs} --dataset {dataset} lists them)")


@task(name="report", cache_policy=NO_CACHE)
def report_task(run_dir: str, baseline: str | None = None, thresholds: dict | list | None = None,
                publish_artifact: bool = True, drift_window: int | None = None, golden: str | None = None) -> dict:
    """Tables, plots, HTML (and with a baseline: verdict.json/.md) under RUN/report. The nightly trend covers
    the earlier runs of the same dataset and preset beside the run; with `drift_window` or `golden` the run is
    also judged against them (reports/drift.py)."""
    from c123_pipeline.reports.build import build_report
    from c123_pipeline.reports.drift import Reference

    # a run folder on object storage: built from a local copy, then RUN/report uploaded
    with storage.local_copy(run_dir, skip=REPORT_READS_NOT) as local, \
            storage.local_copy(baseline, skip=TABLES_ONLY) if baseline else contextlib.nullcontext() as base:
        reference = Reference(drift_window or 5, golden) if drift_window or golden else None
        paths = build_report([str(local)], local / "report", baseline=str(base) if base else None,
                             thresholds=thresholds, history=storage.parent(storage.location(run_dir)),
                             reference=reference)
        storage.upload_folder(local / "report", storage.join(run_dir, "report"))

    def where(path) -> str:
        return str(storage.join(run_dir, str(Path(path).relative_to(local.resolve()))))

    out = {"index_html": where(paths.index_html), "tables_md": where(paths.tables_md),
           "tables_tex": where(paths.tables_tex), "plots": {k: where(v) for k, v in (paths.plots or {}).items()},
           "baseline": str(baseline) if baseline else None, "regressed": False, "verdict_md": None,
           "verdict_markdown": None}
    if paths.verdict is not None:
        out.update(regressed=bool(paths.verdict.regressed), verdict_md=where(paths.verdict_md),
                   verdict_markdown=paths.verdict.markdown)
        if publish_artifact:
            publish_verdict(paths.verdict.markdown)
    return out


def publish_verdict(markdown: str) -> None:
    """The verdict as a Prefect markdown artifact of the current run."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                             description="Regression verdict of this benchmark run against its baseline")
