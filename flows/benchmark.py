"""The `benchmark` flow: dataset cases -> Ray actors (complete reconstructions) -> metrics -> Parquet -> report.

    plan (inputs, configs, run folder, checks, cache)  ->  dispatch (actors; metrics start as cases finish)
    ->  rows (per_case / per_view records)  ->  write (Parquet)  ->  report (tables, plots, verdict)
    ->  final state: Failed when more cases failed than `allow_failures`, or on a regression when asked

Run folder (docs/ARCHITECTURE.md): RUN/run.json, RUN/cases/<variant>/<case>/seed<N>/ (one reconstruction
output folder each, carrying its cache key), RUN/per_case.parquet, RUN/per_view.parquet, RUN/report/.
Rerunning a flow on the same `out` folder recomputes only what is missing: finished cases whose key
(input bytes, resolved config, code version) still matches are reused, metrics likewise; interrupted
cases resume from their own checkpoints. One run at a time holds a run folder (a lock).

Variants are schedule variant names (consistent123, 3d-only, dynamic-only, fixed-switch, 3d-then-2d),
optionally with a weight shape: `consistent123:linear` (or `consistent123@linear`). A non-default shape
gets its own case folder, `cases/<variant>-<shape>/...`.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed, State

from c123.config import tiny_models_dir
from c123.errors import C123Error
from c123.metrics import METRICS, MetricProtocol, get_protocol

RUNS_ENV = "C123_RUNS"


# ---- the parameters --------------------------------------------------------------------------------
@dataclass
class BenchmarkSpec:
    """What to benchmark: the `benchmark` flow's parameters (the flow's signature lists the same names)."""

    dataset: str = "c10"
    """realfusion15 | c10 | realfusion15-original | synthetic | a dataset folder."""
    preset: str = "paper"
    """paper | fast | tiny | verify."""
    variants: list[str] | None = None
    """Schedule variants (default: the preset's, consistent123 but for verify's 3d-only); 'consistent123:linear'
    adds a weight shape."""
    cases: list[str] | str | None = None
    """Case ids or wildcards (a list, or a comma-separated string); None: every case."""
    seeds: list[int] | None = None
    """Seeds (default [0])."""
    out: str | None = None
    """Run folder, a local path or an fsspec URL such as s3://bucket/run (default
    $C123_RUNS/<dataset>-<preset>-<UTC time>); an existing one resumes."""
    overrides: list[str] | None = None
    """Config overrides, 'section.field=value'."""
    num_actors: int | None = None
    """Ray actors (default: one per GPU, else one per CPU)."""
    baseline: str | None = None
    """A finished run folder of the same dataset to judge this run against, or 'latest' (the newest earlier
    run of the same dataset and preset beside `out`)."""
    data_root: str | None = None
    """Folder holding the named datasets (default $C123_DATA)."""
    fail_on_regression: bool = False
    """Mark the flow run Failed when the verdict regresses (the nightly deployment)."""
    allow_failures: int = 0
    """Failed cases that still leave the flow run Completed; more mark it Failed."""
    max_retries: int = 2
    """Retries of a case whose actor died (or ran out of memory)."""
    clip_model: str | None = None
    """CLIP of the CLIP-similarity metric, replacing the protocol's (default: the protocol's, else the preset's)."""
    protocol: str = "c123"
    """Metric protocol: c123 (default) or magic123 (c123.metrics.PROTOCOLS)."""
    thresholds: dict[str, float] | None = None
    """Allowed worsening per metric against the baseline, e.g. {"psnr": 0.5}."""
    work_fn: str | None = None
    """'module:function' replacing the reconstruction in the actors (instrumentation, fault tests)."""

    def check(self) -> None:
        """Parameters that cannot work, as one C123Error line naming the parameter (before anything runs)."""
        from c123_pipeline.datasets.registry import case_patterns
        from c123_pipeline.reports.regression import parse_thresholds

        for name, low in (("num_actors", 1), ("max_retries", 0), ("allow_failures", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise C123Error(f"parameter {name}={value!r} must be an integer >= {low}")
        if self.variants is not None and not self.variants:
            raise C123Error("parameter variants=[] names no variant: leave it out for consistent123")
        if self.seeds is not None and not self.seeds:
            raise C123Error("parameter seeds=[] names no seed: leave it out for seed 0")
        if self.work_fn is not None and ":" not in str(self.work_fn):
            raise C123Error(f"parameter work_fn={self.work_fn!r} is not module:function")
        case_patterns(self.cases)
        get_protocol(self.protocol)
        parse_thresholds(self.thresholds)


# ---- plain helpers (no Prefect) ----------------------------------------------------------------
def base_config(preset_name: str):
    """The named preset; those of the tiny models (`tiny`, `verify`) point at $C123_TINY_MODELS when set."""
    from c123.config import PRESETS, TINY_MODEL_PRESETS, preset

    if preset_name in TINY_MODEL_PRESETS:
        return PRESETS[preset_name](tiny_models_dir())
    return preset(preset_name)


def case_config(cfg, case):
    """The config one case runs with: an oracle that follows the case (prior.oracle_scene 'case', the verify
    preset) answers with the case's own synthetic scene."""
    from c123.config import ORACLE_FROM_CASE

    if cfg.prior.oracle_scene != ORACLE_FROM_CASE:
        return cfg
    if not case.scene:
        raise C123Error(f"case {case.id} has no ground-truth scene, but preset '{cfg.preset}' answers Zero-1-to-3's "
                        "question with the true view of the case's synthetic scene: use the dataset synthetic")
    resolved = copy.deepcopy(cfg)
    resolved.prior.oracle_scene = case.scene
    return resolved


def parse_variant(spec: str) -> tuple[str, str | None]:
    """'consistent123' -> ('consistent123', None); 'consistent123:linear' / '@linear' -> (.., 'linear')."""
    spec = str(spec).strip()
    for sep in (":", "@"):
        if sep in spec:
            name, shape = spec.split(sep, 1)
            return name.strip(), shape.strip()
    return spec, None


def resolve_config(preset_name: str, variant_spec: str, seed: int, overrides: list[str] | None):
    """Preset -> variant (and weight shape) -> seed -> `--set` overrides; every value checked
    (c123.config_checks; the device is checked where the actors run)."""
    from c123.config import apply_overrides
    from c123.config_checks import validate
    from c123.schedules import SHAPES, get_variant

    name, shape = parse_variant(variant_spec)
    get_variant(name)
    cfg = base_config(preset_name)
    cfg.schedule.variant = name
    if shape is not None:
        if shape not in SHAPES:
            raise C123Error(f"unknown weight shape '{shape}' in variant '{variant_spec}': use one of "
                            f"{', '.join(SHAPES)}")
        cfg.schedule.weight_shape = shape
    cfg.seed = seed
    apply_overrides(cfg, list(overrides or []))
    return validate(cfg, check_device=False)


def resolve_inputs(spec: BenchmarkSpec):
    """(Dataset, variants, seeds, {(variant, seed): config}); every user error raised here as one C123Error line."""
    from c123_pipeline.datasets.registry import filter_cases, load_dataset
    from c123_pipeline.tasks.metrics import protocol_overrides

    spec.check()
    variants = list(spec.variants or [base_config(spec.preset).schedule.variant])
    seeds = list(spec.seeds if spec.seeds is not None else [0])
    ds = filter_cases(load_dataset(spec.dataset, spec.data_root), spec.cases)
    overrides = protocol_overrides(get_protocol(spec.protocol), list(spec.overrides or []))
    configs = {(v, s): resolve_config(spec.preset, v, s, overrides) for v in variants for s in seeds}
    for case in ds.cases:  # a case the config cannot run (the oracle needs its scene) is refused now
        case_config(configs[(variants[0], seeds[0])], case)
    folders = {variant_folder(cfg) for (v, s), cfg in configs.items() if s == seeds[0]}
    if len(folders) < len(variants):
        raise C123Error(f"variants {', '.join(variants)} resolve to the same configuration: list each once")
    return ds, variants, seeds, configs


def variant_folder(cfg) -> str:
    """cases/<this>/...: the variant, with the weight shape appended when it is not the default 'exp'."""
    shape = cfg.schedule.weight_shape
    return cfg.schedule.variant if shape == "exp" else f"{cfg.schedule.variant}-{shape}"


def default_run_dir(dataset: str, preset_name: str):
    """$C123_RUNS (a folder or a URL, default ./runs)/<dataset>-<preset>-<UTC time>."""
    from c123_pipeline.tasks import storage

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return storage.join(os.environ.get(RUNS_ENV) or Path("runs"), f"{Path(dataset).name}-{preset_name}-{stamp}")


# ---- the plan ----------------------------------------------------------------------------------
@dataclass
class Entry:
    """One (case, variant, seed) of the run and what became of it."""

    index: int
    case: object
    cfg: object
    case_dir: str
    """Case folder relative to the run folder."""
    key: str
    outcome: object | None = None
    """tasks.actors.Outcome once known (read back for a cached case)."""
    cached: bool = False


@dataclass
class RunPlan:
    """Everything the run does, fixed before the first case is dispatched."""

    spec: BenchmarkSpec
    dataset: object
    run_dir: Path | str
    """A local folder or an fsspec URL (tasks/storage.py)."""
    run_id: str
    version: str
    protocol: MetricProtocol
    """Resolved: the CLIP, the number of views and the LPIPS backbone chosen and present on this machine."""
    entries: list[Entry]
    baseline: Path | str | None
    lock: object
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class Checked:
    """A spec resolved and checked against this machine and the folders it names; nothing written yet."""

    dataset: object
    variants: list[str]
    seeds: list[int]
    configs: dict
    """{(variant, seed): ReconstructConfig}."""
    protocol: MetricProtocol
    baseline: Path | str | None
    run_dir: Path | str


def check_spec(spec: BenchmarkSpec, log) -> Checked:
    """Every check that can fail before compute, as one C123Error line: parameters, dataset, configs, the run
    folder (not another dataset's or preset's), the baseline (same dataset, shares a case), the metric models
    (present on this machine)."""
    from c123.config import TINY_MODEL_PRESETS
    from c123.provenance import offline_defaults
    from c123_pipeline.tasks import storage
    from c123_pipeline.tasks.metrics import resolve_protocol
    from c123_pipeline.tasks.report import check_baseline
    from c123_pipeline.tasks.run_folder import RunLock, check_run_json

    offline_defaults()
    ds, variants, seeds, configs = resolve_inputs(spec)
    run_dir = storage.output_location(spec.out or default_run_dir(ds.name, spec.preset))
    storage.check_reachable(run_dir)
    check_run_json(run_dir, ds.name, spec.preset)
    # a run going on there now: refused before anything starts (plan() locks it for real; a URL has no lock)
    if isinstance(run_dir, Path) and run_dir.is_dir():
        RunLock(run_dir).acquire().release()
    first = configs[(variants[0], seeds[0])]
    requested = get_protocol(spec.protocol)
    if spec.clip_model:
        requested = dataclasses.replace(requested, clip_model=spec.clip_model)
    protocol = resolve_protocol(requested, first.prior.clip_model, first.train.eval_views,
                                spec.preset in TINY_MODEL_PRESETS)
    baseline = check_baseline(spec.baseline, run_dir, ds.name, spec.preset, [c.id for c in ds.cases], log)
    return Checked(ds, variants, seeds, configs, protocol, baseline, run_dir)


def plan(spec: BenchmarkSpec, log, t_start: float) -> RunPlan:
    """The checks, then the run folder (locked, its run.json) and one entry per (case, variant, seed), with the
    outcome of those already finished."""
    from c123_pipeline.tasks import cache
    from c123_pipeline.tasks.run_folder import RunLock, inside, prepare_run_json

    checked = check_spec(spec, log)
    ds, run_dir, first = checked.dataset, checked.run_dir, checked.configs[(checked.variants[0], checked.seeds[0])]
    lock = RunLock(run_dir).acquire()
    try:
        version = cache.code_version()
        info = prepare_run_json(run_dir, {
            "run_id": f"{ds.name}-{spec.preset}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-"
                      f"{uuid.uuid4().hex[:6]}",
            "dataset": ds.name, "dataset_root": str(ds.root) if ds.root else None, "preset": spec.preset,
            "variants": checked.variants, "seeds": checked.seeds, "cases": [c.id for c in ds.cases],
            "overrides": list(spec.overrides or []), "code_version": version,
            "protocol": {**dataclasses.asdict(checked.protocol), "resolution": first.train.eval_size},
            "created_at": datetime.now(timezone.utc).isoformat(),
            "config": {v: {"config": checked.configs[(v, checked.seeds[0])].to_dict(),
                           "config_hash": checked.configs[(v, checked.seeds[0])].hash()} for v in checked.variants},
        }, warn=log.warning)
        entries = []
        for cfg in checked.configs.values():
            for case in ds.cases:
                rel = f"cases/{variant_folder(cfg)}/{case.id}/seed{cfg.seed}"
                inside(run_dir, rel)
                case_cfg = case_config(cfg, case)
                entries.append(Entry(len(entries), case, case_cfg, rel, cache.cache_key(case, case_cfg, version)))
    except BaseException:
        lock.release()
        raise
    for entry in entries:
        reuse_finished(entry, run_dir)
    log.info(f"run {info['run_id']}: {len(ds.cases)} cases x {len(checked.variants)} variants x "
             f"{len(checked.seeds)} seeds -> {run_dir}; {sum(e.cached for e in entries)} cached")
    return RunPlan(spec, ds, run_dir, info["run_id"], version, checked.protocol, entries, checked.baseline, lock,
                   {"prepare": time.perf_counter() - t_start})


def reuse_finished(entry: Entry, run_dir: Path | str) -> None:
    """A case folder finished under the entry's key gives its outcome without compute."""
    from c123_pipeline.tasks import cache, storage
    from c123_pipeline.tasks.actors import Outcome

    folder = storage.join(run_dir, entry.case_dir)
    if cache.is_done(folder, entry.key):
        try:
            entry.outcome, entry.cached = Outcome(result=cache.load_result(folder)), True
        except (OSError, ValueError):
            entry.outcome = None


# ---- metrics, as cases finish ------------------------------------------------------------------
class MetricStep:
    """Metrics of finished cases: cached ones read back, others computed as Prefect tasks while later cases
    still run. The metric models load in a background thread, only when some metric has to be computed."""

    def __init__(self, plan_: RunPlan):
        self.plan = plan_
        self.loader = ThreadPoolExecutor(max_workers=1)
        self._models: Future | None = None
        self.pending: dict[int, object] = {}
        self.values: dict[int, dict] = {}

    def models(self, after=None) -> Future:
        """The metric models' future; `after` (first call only) runs first in the loader thread."""
        from c123.config import TINY_MODEL_PRESETS
        from c123_pipeline.tasks.metrics import load_metric_models

        if self._models is None:
            def load():
                if after is not None:
                    after()
                if self.plan.spec.preset in TINY_MODEL_PRESETS:  # the tiny CLIP is written on first use
                    from c123.priors.tiny import write_tiny_models
                    write_tiny_models(Path(self.plan.entries[0].cfg.prior.clip_model).expanduser().parent)
                return load_metric_models(self.plan.protocol, os.environ.get("C123_METRICS_DEVICE", "cpu"))
            self._models = self.loader.submit(load)
        return self._models

    def submit(self, entry: Entry) -> None:
        """Start (or read back) the metrics of a finished case; failed cases have none."""
        from c123_pipeline.tasks import storage
        from c123_pipeline.tasks.metrics import cached_metrics, case_metrics_task, metrics_key

        if entry.outcome.status != "ok":
            return
        folder = storage.join(self.plan.run_dir, entry.case_dir)
        key = metrics_key(entry.key, self.plan.protocol, entry.case.scene)
        found = cached_metrics(folder, key)
        if found is not None:
            self.values[entry.index] = found
        else:
            self.pending[entry.index] = case_metrics_task.submit(str(folder), entry.outcome.result,
                                                                 self.models().result(), key, entry.case.scene)

    def result(self, entry: Entry) -> dict:
        """The metric columns of an entry (NaN with the reason for a failed case)."""
        from c123_pipeline.tasks.metrics import failed_case_metrics

        if entry.index in self.pending:
            return self.pending[entry.index].result()
        if entry.index in self.values:
            return self.values[entry.index]
        return failed_case_metrics(self.plan.protocol, entry.cfg.train.eval_views, entry.cfg.train.eval_size)

    def close(self) -> None:
        self.loader.shutdown(wait=False)


# ---- dispatch ----------------------------------------------------------------------------------
def warm_config(spec: BenchmarkSpec, cfg) -> dict | None:
    """The config whose priors the actors load as they start: the first case's, for the reconstruction (a
    `work_fn` replacing it may need none)."""
    return cfg.to_dict() if spec.work_fn is None else None


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
    tasks/warm_start.py); each finished case starts its metrics."""
    from c123.config_checks import check_device_exists
    from c123_pipeline.tasks import storage, warm_start
    from c123_pipeline.tasks.actors import ActorPool, Job, input_bytes, pool_shape
    from c123_pipeline.tasks.ray_cluster import ensure_ray, shutdown_ray

    stats = DispatchStats()
    for entry in plan_.entries:
        if entry.cached:
            metrics.submit(entry)
    todo = [e for e in plan_.entries if e.outcome is None]
    warm = warm_start.take(plan_.spec)  # from here on, this run stops it (an error before: the command does)
    if not todo:
        stats.stopper = warm.release() if warm else None
        return stats
    cluster, stats.started_ahead = None, warm is not None
    try:
        cluster, pool = warm.ready() if warm else (ensure_ray(), None)
        plan_.timings["ray_start"] = time.perf_counter() - t_start - plan_.timings["prepare"]
        for entry in todo:  # the device must exist where the actors run, not necessarily here
            check_device_exists(entry.cfg.train.device, int(cluster.num_gpus))
        stats.actors, resources = pool_shape(cluster.num_cpus, cluster.num_gpus, len(todo), plan_.spec.num_actors)
        if pool is None:
            pool = ActorPool(stats.actors, resources=resources, work_fn=plan_.spec.work_fn,
                             max_retries=plan_.spec.max_retries, warm_config=warm_config(plan_.spec, todo[0].cfg))
        else:
            pool.trim(stats.actors)
            stats.actors = pool.num_actors
        pool.log = log
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
        if warm is not None:  # its keeper thread stops the pool and the cluster it started
            stats.stopper = warm.release()
        elif cluster is not None and cluster.started:
            stats.stopper = threading.Thread(target=shutdown_ray, name="ray-shutdown")
            stats.stopper.start()
    return stats


# ---- rows, write, report -----------------------------------------------------------------------
def rows(plan_: RunPlan, metrics: MetricStep):
    """(per_case rows, per_view rows) of every entry, in plan order."""
    from c123_pipeline.tasks.results import CaseRow, ViewRow

    case_rows, view_rows = [], []
    for entry in plan_.entries:
        values = metrics.result(entry)
        result = entry.outcome.result or {}
        cfg, stages = entry.cfg, result.get("stage_seconds") or {}
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
            case_dir=entry.case_dir, cache_key=entry.key, node_id=entry.outcome.node_id))
        view_rows += [ViewRow(**common, **view) for view in values.get("per_view", [])]
    return case_rows, view_rows


def first_error(case_rows) -> str:
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
def benchmark(dataset: str = "c10", preset: str = "paper", variants: list[str] | None = None,
              cases: list[str] | str | None = None, seeds: list[int] | None = None, out: str | None = None,
              overrides: list[str] | None = None, num_actors: int | None = None, baseline: str | None = None,
              data_root: str | None = None, fail_on_regression: bool = False, allow_failures: int = 0,
              max_retries: int = 2, clip_model: str | None = None, protocol: str = "c123",
              thresholds: dict[str, float] | None = None, work_fn: str | None = None) -> dict:
    """Benchmark `preset` x `variants` x `seeds` on `dataset` into the run folder `out`; parameters: see
    BenchmarkSpec. The flow run is Failed when more than `allow_failures` cases failed (after the Parquet
    files and the report of the others are written), or on a regression with `fail_on_regression`."""
    spec = BenchmarkSpec(**locals())
    return final_state(spec, run_benchmark(spec))


def run_benchmark(spec: BenchmarkSpec) -> dict:
    """The flow's body, as named steps (inside a flow run: uses its logger and submits its tasks)."""
    from c123_pipeline.tasks.report import report_task
    from c123_pipeline.tasks.results import write_results_task

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
        report = report_task(str(plan_.run_dir), str(plan_.baseline) if plan_.baseline else None, spec.thresholds)
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
