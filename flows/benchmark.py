"""The `benchmark` flow: dataset cases -> Ray actors (complete reconstructions) -> metrics -> Parquet -> report.

    plan (inputs, configs, run folder, checks, cache)  ->  dispatch (actors; metrics start as cases finish)
    ->  rows (per_case / per_view records)  ->  write (Parquet)  ->  report (tables, plots, verdict)
    ->  final state: Failed when more cases failed than `allow_failures`, or on a regression when asked

Run folder (docs/ARCHITECTURE.md): RUN/run.json, RUN/cases/<variant>/<case>/seed<N>/ (one reconstruction
output folder each, carrying its cache key), RUN/per_case.parquet, RUN/per_view.parquet, RUN/report/.
Rerunning a flow on the same `out` folder recomputes only what is missing: finished cases whose key
(input bytes, resolved config, code version) still matches are reused, metrics likewise; interrupted
cases resume from their own checkpoints. One run at a time holds a run folder (a lock).

The steps' records and helpers live beside this file: flows/spec.py (the parameters, their checks, the
configs), flows/planning.py (the plan), flows/metric_step.py (metrics as cases finish), flows/cluster.py (Ray and
the actors, started ahead or here, stopped in the background).

Variants are schedule variant names (consistent123, 3d-only, dynamic-only, fixed-switch, 3d-then-2d),
optionally with a weight shape: `consistent123:linear` (or `consistent123@linear`). A non-default shape
gets its own case folder, `cases/<variant>-<shape>/...`.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from c123.metrics import METRICS
from c123_pipeline.flows.cluster import RunCluster
from c123_pipeline.flows.metric_step import MetricStep
from c123_pipeline.flows.planning import RunPlan, plan
from c123_pipeline.flows.spec import BenchmarkSpec, flow_parameters, variant_folder
from c123_pipeline.tasks import storage
from c123_pipeline.tasks.report import report_task

if TYPE_CHECKING:
    import threading

    from c123_pipeline.tasks.results import CaseRow, ViewRow


# ---- dispatch ----------------------------------------------------------------------------------
@dataclass
class DispatchStats:
    """What the dispatch step did."""

    actors: int = 0
    replaced: int = 0
    compute_seconds: float = 0.0
    case_seconds: list[float] = field(default_factory=list)
    spans: list[tuple] = field(default_factory=list)
    started_ahead: bool = False
    """The cluster and actors were started before the flow run (tasks/warm_start.py)."""
    stopper: threading.Thread | None = None
    """Stops the actors and a cluster this run started, in the background, while metrics and the report are
    written (awaited at the run's end; one started ahead is awaited by whoever started it)."""


def dispatch(plan_: RunPlan, metrics: MetricStep, log, t_start: float) -> DispatchStats:
    """Cases without a finished folder go to Ray actors (started ahead by the command when it could: see
    flows/cluster.py); each finished case starts its metrics."""
    from c123_pipeline.tasks.actors import Job, input_bytes  # imports Ray: only when a case is computed

    stats = DispatchStats()
    for entry in plan_.entries:
        if entry.cached:
            metrics.submit(entry)
    todo = [e for e in plan_.entries if e.outcome is None]
    lease = RunCluster.take(plan_.spec)  # from here on, this run stops it (an error before: the command does)
    if not todo:
        stats.stopper = lease.stop()
        return stats
    stats.started_ahead = lease.started_ahead
    try:
        cluster = lease.cluster([e.cfg for e in todo])
        plan_.timings["ray_start"] = time.perf_counter() - t_start - plan_.timings["prepare"]
        pool = lease.pool(todo[0].cfg, len(todo), log)
        stats.actors = pool.num_actors
        log.info(f"Ray at {cluster.address}: {stats.actors} actors x {pool.resources}; {len(todo)} cases to compute"
                 f"{' (started ahead)' if stats.started_ahead else ''}")
        remote = isinstance(plan_.run_dir, str)  # object storage: the nodes share no disk, inputs travel along
        jobs = [Job(e.index, e.case, variant_folder(e.cfg), e.cfg.seed, e.cfg.to_dict(),
                    str(storage.join(plan_.run_dir, e.case_dir)), e.key, plan_.dataset.name,
                    input_bytes(e.case) if remote else None) for e in todo]
        t_epoch = time.time() - (time.perf_counter() - t_start)
        with pool:
            # loaded once the actors have started and loaded their priors, while they compute (on a small
            # machine the load would slow the actors' start, which nothing overlaps)
            metrics.models(after=pool.wait_ready)
            metrics.loader.submit(importlib.import_module, "c123_pipeline.reports.build")  # ready for the report
            for job, outcome in pool.run(jobs):
                entry = plan_.entries[job.index]
                entry.outcome = outcome
                stats.compute_seconds += outcome.seconds
                stats.case_seconds.append(outcome.seconds)
                if outcome.span:
                    stats.spans.append((outcome.slot, *(t - t_epoch for t in outcome.span)))
                tail = "" if outcome.status == "ok" else f": {outcome.error}"
                log.info(f"{job.label()} {outcome.status} in {outcome.seconds:.1f} s after {outcome.attempts} "
                         f"attempt(s){tail}")
                metrics.submit(entry)
            stats.replaced = pool.replaced
    finally:
        stats.stopper = lease.stop()
    return stats


# ---- rows, write, report -----------------------------------------------------------------------
def rows(plan_: RunPlan, metrics: MetricStep) -> tuple[list[CaseRow], list[ViewRow]]:
    """(per_case rows, per_view rows) of every entry, in plan order."""
    from c123_pipeline.tasks.results import CaseRow, ViewRow  # pandas and pyarrow: not for a refused spec

    case_rows, view_rows = [], []
    for entry in plan_.entries:
        values = metrics.result(entry)
        result = entry.outcome.result or {}
        cfg, stages, camera = entry.cfg, result.get("stage_seconds") or {}, result.get("input_camera") or {}
        seconds = {k: float(stages[k]) if stages.get(k) is not None else float("nan") for k in ("nerf", "dmtet", "export")}
        common = dict(run_id=plan_.run_id, dataset=plan_.dataset.name, case=entry.case.id,
                      variant=cfg.schedule.variant, weight_shape=cfg.schedule.weight_shape, seed=cfg.seed)
        case_rows.append(CaseRow(
            **common, category=entry.case.category, preset=plan_.spec.preset, status=entry.outcome.status,
            error=entry.outcome.error, switch_iteration=result.get("switch_iteration"),
            seconds_nerf=seconds["nerf"], seconds_dmtet=seconds["dmtet"], seconds_export=seconds["export"],
            seconds_total=sum(v for v in seconds.values() if v == v) if result else float("nan"),
            **{m: values[m] for m in METRICS}, metric_status=values["metric_status"],
            **{k: values[k] for k in ("protocol", "clip_model", "num_views", "resolution", "background",
                                      "lpips_net")},
            config_hash=result.get("config_hash") or cfg.hash(),
            code_version=result.get("code_version") or plan_.version, device=result.get("device") or "",
            case_dir=entry.case_dir, cache_key=entry.key, node_id=entry.outcome.node_id,
            peak_memory_gb=entry.outcome.peak_memory_gb,
            elevation=float(camera.get("elevation", 90.0 - cfg.camera.ref_polar)),  # an estimate: the run's
            elevation_source=entry.elevation_source,
            elevation_confidence=float((camera.get("estimate") or {}).get("confidence", float("nan"))),
            prior_3d=cfg.prior.zero123_family,
            true_elevation=float("nan") if entry.case.true_elevation is None else float(entry.case.true_elevation)))
        view_rows += [ViewRow(**common, **view) for view in values.get("per_view", [])]
    return case_rows, view_rows


def first_error(case_rows: list[CaseRow]) -> str:
    failed = [r for r in case_rows if r.status != "ok"]
    return f"{failed[0].variant}/{failed[0].case}/seed{failed[0].seed}: {failed[0].error}" if failed else ""


def final_state(spec: BenchmarkSpec, summary: dict) -> dict | State:
    """Failed when more cases failed than allowed, or when the run regressed and that should fail it."""
    problems = []
    if summary["failed"] > spec.allow_failures:
        allowed = f" (allowed: {spec.allow_failures})" if spec.allow_failures else ""
        problems.append(f"{summary['failed']} failed of {summary['cases']}{allowed}; first: {summary['first_error']}")
    if spec.fail_on_regression and summary["regressed"]:
        problems.append(f"regression against {summary['baseline']}: see {summary['verdict_md']}")
    return Failed(message="; ".join(problems), data=summary) if problems else summary


# ---- the flow ----------------------------------------------------------------------------------
@flow(name="benchmark", flow_run_name="{dataset}-{preset}", log_prints=False)
@flow_parameters
def benchmark(**parameters) -> dict:
    """Benchmark `preset` x `variants` x `seeds` on `dataset` into the run folder `out`; the parameters are
    BenchmarkSpec's fields (flows/spec.py). The flow run is Failed when more than `allow_failures` cases failed
    (after the Parquet files and the report of the others are written), or on a regression with
    `fail_on_regression`."""
    spec = BenchmarkSpec(**parameters)
    return final_state(spec, run_benchmark(spec))


def run_benchmark(spec: BenchmarkSpec) -> dict:
    """The flow's body, as named steps (inside a flow run: uses its logger and submits its tasks)."""
    from c123_pipeline.tasks.results import write_results_task  # pandas and pyarrow: not for a refused spec

    log = get_run_logger()
    t_start = time.perf_counter()
    plan_ = plan(spec, log, t_start)
    metrics = MetricStep(plan_)
    try:
        stats = dispatch(plan_, metrics, log, t_start)
        plan_.timings["dispatch_end"] = time.perf_counter() - t_start
        case_rows, view_rows = rows(plan_, metrics)
        plan_.timings["metrics_end"] = time.perf_counter() - t_start
        written = write_results_task(str(plan_.run_dir), case_rows, view_rows)
        plan_.timings["parquet_end"] = time.perf_counter() - t_start
        report = report_task(str(plan_.run_dir), str(plan_.baseline) if plan_.baseline else None, spec.thresholds,
                             drift_window=spec.drift_window, golden=spec.golden)
        plan_.timings["report_end"] = time.perf_counter() - t_start
        if stats.stopper is not None and not stats.started_ahead:  # a start made ahead is awaited by its maker
            stats.stopper.join()
    finally:
        metrics.close()
        plan_.lock.release()
    n_failed = sum(r.status != "ok" for r in case_rows)
    wall = time.perf_counter() - t_start
    summary = {
        "run_id": plan_.run_id, "run_dir": str(plan_.run_dir), "per_case": written["per_case"],
        "per_view": written["per_view"], "report": report["index_html"], "cases": len(case_rows),
        "ok": len(case_rows) - n_failed, "failed": n_failed, "cached": sum(e.cached for e in plan_.entries),
        "computed": sum(not e.cached for e in plan_.entries), "actors": stats.actors,
        "actors_replaced": stats.replaced, "started_ahead": stats.started_ahead, "wall_seconds": wall,
        "compute_seconds": stats.compute_seconds,
        "case_seconds": stats.case_seconds, "case_spans": stats.spans, "timings": plan_.timings,
        "protocol": dataclasses.asdict(plan_.protocol),
        "baseline": report["baseline"], "regressed": report["regressed"], "verdict_md": report["verdict_md"],
        "verdict_markdown": report["verdict_markdown"], "first_error": first_error(case_rows),
        "errors": {f"{r.variant}/{r.case}/seed{r.seed}": r.error for r in case_rows if r.error},
    }
    log.info(f"{summary['ok']} ok, {n_failed} failed ({summary['cached']} cached) in {wall:.1f} s; "
             f"per_case: {written['per_case']}; report: {report['index_html']}")
    return summary


def summary_of(state: State) -> dict:
    """The summary a finished benchmark flow run returned (also when it is Failed); an error that stopped it
    before the summary is raised again (a C123Error keeps its one line)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result
    return result
