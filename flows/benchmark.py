"""The `benchmark` flow: dataset cases -> Ray actors (complete reconstructions) -> metrics -> Parquet -> report.

Run folder (docs/ARCHITECTURE.md): RUN/run.json, RUN/cases/<variant>/<case>/seed<N>/ (one reconstruction
output folder each, carrying its cache key), RUN/per_case.parquet, RUN/per_view.parquet, RUN/report/.
Rerunning a flow on the same `out` folder recomputes only what is missing: finished cases whose key
(input bytes, resolved config, code version) still matches are reused, metrics likewise; interrupted
cases resume from their own checkpoints.

Variants are schedule variant names (consistent123, 3d-only, dynamic-only, fixed-switch, 3d-then-2d),
optionally with a weight shape: `consistent123:linear` (or `consistent123@linear`). A non-default shape
gets its own case folder, `cases/<variant>-<shape>/...`.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.states import Failed

from c123.errors import C123Error

DEFAULT_VARIANTS = ["consistent123"]
TINY_MODELS_ENV = "C123_TINY_MODELS"
RUNS_ENV = "C123_RUNS"


# ---- plain helpers (no Prefect) ----------------------------------------------------------------
def tiny_models_dir() -> str:
    """Where the tiny preset's models live: $C123_TINY_MODELS, else config.tiny's default."""
    return os.environ.get(TINY_MODELS_ENV) or "~/.cache/c123/tiny-models"


def base_config(preset_name: str):
    """The named preset; `tiny` points at $C123_TINY_MODELS when set."""
    from c123.config import preset, tiny

    if preset_name == "tiny":
        return tiny(tiny_models_dir())
    return preset(preset_name)


def parse_variant(spec: str) -> tuple[str, str | None]:
    """'consistent123' -> ('consistent123', None); 'consistent123:linear' / '@linear' -> (.., 'linear')."""
    spec = str(spec).strip()
    for sep in (":", "@"):
        if sep in spec:
            name, shape = spec.split(sep, 1)
            return name.strip(), shape.strip()
    return spec, None


def resolve_config(preset_name: str, variant_spec: str, seed: int, overrides: list[str] | None):
    """Preset -> variant (and weight shape) -> seed -> `--set` overrides; validated."""
    from c123.config import apply_overrides
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
    cfg.seed = int(seed)
    apply_overrides(cfg, list(overrides or []))
    if cfg.schedule.weight_shape not in SHAPES:
        raise C123Error(f"unknown weight shape '{cfg.schedule.weight_shape}': use one of {', '.join(SHAPES)}")
    get_variant(cfg.schedule.variant)
    return cfg


def resolve_inputs(dataset, preset_name, variants=None, cases=None, seeds=None, overrides=None, data_root=None):
    """(Dataset, variants, seeds, {(variant, seed): config}); every user error raised here as one C123Error line."""
    from datasets.registry import filter_cases, load_dataset

    variants = list(variants or DEFAULT_VARIANTS)
    seeds = [int(s) for s in (seeds if seeds not in (None, []) else [0])]
    if isinstance(cases, str):
        cases = [c for c in cases.split(",") if c.strip()]
    ds = filter_cases(load_dataset(dataset, data_root), cases)
    configs = {(v, s): resolve_config(preset_name, v, s, overrides) for v in variants for s in seeds}
    folders = {variant_folder(cfg) for (v, s), cfg in configs.items() if s == seeds[0]}
    if len(folders) < len(variants):
        raise C123Error(f"variants {', '.join(variants)} resolve to the same configuration: list each once")
    return ds, variants, seeds, configs


def variant_folder(cfg) -> str:
    """cases/<this>/...: the variant, with the weight shape appended when it is not the default 'exp'."""
    shape = cfg.schedule.weight_shape
    return cfg.schedule.variant if shape == "exp" else f"{cfg.schedule.variant}-{shape}"


def default_run_dir(dataset: str, preset_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(os.environ.get(RUNS_ENV) or "runs") / f"{Path(dataset).name}-{preset_name}-{stamp}"


def write_json_atomic(path: Path, data: dict) -> None:
    from c123.atomic import write_atomic

    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def prepare_run_json(run_dir: Path, info: dict) -> dict:
    """Create RUN/run.json, or update it on a rerun (same dataset and preset; run id and created_at kept)."""
    path = run_dir / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
        for key in ("dataset", "preset"):
            if old.get(key) not in (None, info[key]):
                raise C123Error(f"{run_dir} holds a run of {key} '{old[key]}', not '{info[key]}': pass another "
                                "--out folder")
        info["run_id"] = old.get("run_id") or info["run_id"]
        info["created_at"] = old.get("created_at") or info["created_at"]
        info["updated_at"] = datetime.now(timezone.utc).isoformat()
    write_json_atomic(path, info)
    return info


def case_row(*, run_id, dataset, case, cfg, preset_name, status, error, result, metrics, case_dir, key,
             version) -> dict:
    """One per_case row (metrics dict from tasks.metrics)."""
    stages = (result or {}).get("stage_seconds") or {}
    nan = float("nan")
    secs = {k: float(stages[k]) if k in stages and stages[k] is not None else nan for k in ("nerf", "dmtet", "export")}
    total = sum(v for v in secs.values() if v == v) if result else nan
    return {
        "run_id": run_id, "dataset": dataset, "case": case.id, "category": case.category,
        "variant": cfg.schedule.variant, "weight_shape": cfg.schedule.weight_shape, "preset": preset_name,
        "seed": int(cfg.seed), "status": status, "error": error,
        "switch_iteration": (result or {}).get("switch_iteration"),
        "seconds_nerf": secs["nerf"], "seconds_dmtet": secs["dmtet"], "seconds_export": secs["export"],
        "seconds_total": total,
        **{k: metrics.get(k, nan) for k in ("clip_similarity", "psnr", "lpips")},
        "metric_status": metrics.get("metric_status"),
        **{k: metrics.get(k, nan) for k in ("novel_psnr", "novel_lpips", "chamfer")},
        **{k: metrics.get(k) for k in ("clip_model", "num_views", "resolution", "background", "lpips_net")},
        "config_hash": (result or {}).get("config_hash") or cfg.hash(),
        "code_version": (result or {}).get("code_version") or version,
        "device": (result or {}).get("device") or "",
        "case_dir": case_dir, "cache_key": key,
    }


# ---- the flow ----------------------------------------------------------------------------------
@flow(name="benchmark", flow_run_name="{dataset}-{preset}", log_prints=False)
def benchmark(dataset: str = "c10", preset: str = "paper", variants: list[str] | None = None,
              cases: list[str] | str | None = None, seeds: list[int] | None = None, out: str | None = None,
              overrides: list[str] | None = None, num_actors: int | None = None, baseline: str | None = None,
              data_root: str | None = None, fail_on_regression: bool = False, max_retries: int = 2,
              clip_model: str | None = None, lpips_net: str = "alex", thresholds: dict[str, float] | None = None,
              work_fn: str | None = None) -> dict:
    """Benchmark `preset` x `variants` x `seeds` on `dataset` (optionally only `cases`) into the run folder `out`.

    baseline: a finished run folder to judge this run against, or 'latest' (the newest earlier run of the
    same dataset and preset beside `out`). fail_on_regression: mark this flow run failed when the verdict
    regresses (the nightly deployment). clip_model: CLIP of the CLIP-similarity metric (default: the
    preset's). work_fn: 'module:function' replacing the reconstruction in the actors (instrumentation,
    fault tests).
    """
    summary = run_benchmark(dataset=dataset, preset_name=preset, variants=variants, cases=cases, seeds=seeds,
                            out=out, overrides=overrides, num_actors=num_actors, baseline=baseline,
                            data_root=data_root, max_retries=max_retries, clip_model=clip_model,
                            lpips_net=lpips_net, thresholds=thresholds, work_fn=work_fn)
    if fail_on_regression and summary.get("regressed"):
        return Failed(message=f"regression against {summary['baseline']}: see {summary.get('verdict_md')}",
                      data=summary)
    return summary


def run_benchmark(*, dataset, preset_name, variants=None, cases=None, seeds=None, out=None, overrides=None,
                  num_actors=None, baseline=None, data_root=None, max_retries=2, clip_model=None,
                  lpips_net="alex", thresholds=None, work_fn=None) -> dict:
    """The flow's body (inside a flow run: uses its logger and submits its tasks)."""
    from tasks import cache
    from tasks.metrics import cached_metrics, case_metrics_task, failed_case_metrics, load_metric_models, metrics_key
    from tasks.report import find_latest_baseline, report_task
    from tasks.results import write_results_task

    log = get_run_logger()
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get("C123_ALLOW_DOWNLOAD") == "1" else "1")
    overrides = list(overrides or [])
    ds, variants, seeds, configs = resolve_inputs(dataset, preset_name, variants, cases, seeds, overrides, data_root)
    version = cache.code_version()
    run_dir = Path(out) if out else default_run_dir(ds.name, preset_name)
    run_dir = run_dir.expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    first = {v: configs[(v, seeds[0])] for v in variants}
    metric_clip = clip_model or first[variants[0]].prior.clip_model
    allow_random_lpips = preset_name == "tiny"
    num_views, resolution = first[variants[0]].train.eval_views, first[variants[0]].train.eval_size
    info = prepare_run_json(run_dir, {
        "run_id": f"{ds.name}-{preset_name}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-"
                  f"{uuid.uuid4().hex[:6]}",
        "dataset": ds.name, "dataset_root": str(ds.root) if ds.root else None, "preset": preset_name,
        "variants": variants, "seeds": seeds, "cases": [c.id for c in ds.cases], "overrides": overrides,
        "code_version": version,
        "protocol": {"clip_model": metric_clip, "num_views": num_views, "resolution": resolution,
                     "background": "white", "lpips_net": lpips_net},
        "created_at": datetime.now(timezone.utc).isoformat(),
        "config": {v: {"config": cfg.to_dict(), "config_hash": cfg.hash()} for v, cfg in first.items()},
    })
    run_id = info["run_id"]
    log.info(f"run {run_id}: {len(ds.cases)} cases x {len(variants)} variants x {len(seeds)} seeds -> {run_dir}")

    # Metric models load in a background thread, only when some metric has to be computed
    loader = ThreadPoolExecutor(max_workers=1)
    models_future = None

    def metric_models(after=None):
        """The metric models' future; `after` (first call only) runs first in the loader thread."""
        nonlocal models_future
        if models_future is None:
            def load():
                if after is not None:
                    after()
                if preset_name == "tiny":  # the tiny CLIP must exist before the metric loads it
                    from c123.priors.tiny import write_tiny_models
                    write_tiny_models(Path(first[variants[0]].prior.clip_model).expanduser().parent)
                return load_metric_models(metric_clip, lpips_net, os.environ.get("C123_METRICS_DEVICE", "cpu"),
                                          allow_random_lpips)
            models_future = loader.submit(load)
        return models_future

    entries, jobs = [], []
    for (v, s), cfg in configs.items():
        for case in ds.cases:
            rel = f"cases/{variant_folder(cfg)}/{case.id}/seed{s}"
            key = cache.cache_key(case, cfg, version)
            entry = {"case": case, "cfg": cfg, "case_dir": rel, "key": key, "outcome": None, "cached": False}
            if cache.is_done(run_dir / rel, key):
                try:
                    entry.update(outcome={"status": "ok", "error": None,
                                          "result": cache.load_result(run_dir / rel), "seconds": 0.0},
                                 cached=True)
                except (OSError, ValueError):
                    entry["outcome"] = None
            if entry["outcome"] is None:
                from tasks.actors import make_job
                jobs.append(make_job(len(entries), case, variant_folder(cfg), s, cfg.to_dict(), run_dir / rel,
                                     key, ds.name))
            entries.append(entry)
    log.info(f"{len(entries) - len(jobs)} cached, {len(jobs)} to compute")

    metric_futures: dict[int, object] = {}
    metric_values: dict[int, dict] = {}

    def submit_metrics(i: int) -> None:
        e = entries[i]
        if e["outcome"]["status"] != "ok":
            return
        key = metrics_key(e["key"], metric_clip, lpips_net, allow_random_lpips, e["case"].scene)
        found = cached_metrics(run_dir / e["case_dir"], key)
        if found is not None:
            metric_values[i] = found
        else:
            metric_futures[i] = case_metrics_task.submit(str(run_dir / e["case_dir"]), e["outcome"]["result"],
                                                         metric_models().result(), key, e["case"].scene)

    for i, e in enumerate(entries):
        if e["cached"]:
            submit_metrics(i)

    compute_seconds, replaced, n_actors, job_seconds, spans, stopper = 0.0, 0, 0, [], [], None
    t_epoch = time.time() - (time.perf_counter() - t_start)
    if jobs:
        from tasks.actors import ActorPool, actor_resources, default_num_actors
        from tasks.ray_cluster import ensure_ray, shutdown_ray

        timings["prepare"] = time.perf_counter() - t_start
        cluster = ensure_ray()
        timings["ray_start"] = time.perf_counter() - t_start - timings["prepare"]
        n_actors = min(len(jobs), int(num_actors) if num_actors else
                       default_num_actors(cluster.num_cpus, cluster.num_gpus))
        resources = actor_resources(cluster.num_gpus)
        if not resources["num_gpus"]:
            resources["num_cpus"] = min(1.0, cluster.num_cpus / n_actors) if cluster.num_cpus else 1.0
        log.info(f"Ray at {cluster.address}: {n_actors} actors x {resources}")
        try:
            with ActorPool(n_actors, resources=resources, work_fn=work_fn, max_retries=max_retries,
                           logger=log) as pool:
                # Loaded while the actors compute, not while they start: on a small machine that load would
                # slow the actors' start, which nothing overlaps
                metric_models(after=pool.wait_ready)
                loader.submit(importlib.import_module, "reports.build")
                for job, outcome in pool.run(jobs):
                    i = job["index"]
                    entries[i]["outcome"] = outcome
                    compute_seconds += float(outcome.get("seconds") or 0.0)
                    job_seconds.append(float(outcome.get("seconds") or 0.0))
                    if outcome.get("span"):
                        spans.append((outcome.get("slot"), *(t - t_epoch for t in outcome["span"])))
                    tail = "" if outcome["status"] == "ok" else f": {outcome['error']}"
                    log.info(f"{job['case_id']} ({job['variant']}, seed {job['seed']}) {outcome['status']} in "
                             f"{outcome.get('seconds', 0):.1f} s after {outcome.get('attempts', 1)} attempt(s){tail}")
                    submit_metrics(i)
                replaced = pool.replaced
        finally:
            if cluster.started:  # a cluster this flow started stops with it (meanwhile metrics and report run)
                stopper = threading.Thread(target=shutdown_ray, name="ray-shutdown")
                stopper.start()

    timings["dispatch_end"] = time.perf_counter() - t_start
    failed_metrics = None
    case_rows, view_rows = [], []
    for i, e in enumerate(entries):
        outcome, cfg = e["outcome"], e["cfg"]
        if i in metric_futures:
            metrics = metric_futures[i].result()
        elif i in metric_values:
            metrics = metric_values[i]
        else:
            if failed_metrics is None:
                failed_metrics = failed_case_metrics(metric_models().result(), num_views, resolution)
            metrics = {**failed_metrics, "num_views": cfg.train.eval_views, "resolution": cfg.train.eval_size}
        case_rows.append(case_row(run_id=run_id, dataset=ds.name, case=e["case"], cfg=cfg, preset_name=preset_name,
                                  status=outcome["status"], error=outcome.get("error"),
                                  result=outcome.get("result"), metrics=metrics, case_dir=e["case_dir"],
                                  key=e["key"], version=version))
        for v in metrics.get("per_view", []):
            view_rows.append({"run_id": run_id, "dataset": ds.name, "case": e["case"].id,
                              "variant": cfg.schedule.variant, "weight_shape": cfg.schedule.weight_shape,
                              "seed": int(cfg.seed), **v})
    loader.shutdown(wait=False)
    timings["metrics_end"] = time.perf_counter() - t_start
    written = write_results_task(str(run_dir), case_rows, view_rows)
    timings["parquet_end"] = time.perf_counter() - t_start

    if baseline == "latest":
        found = find_latest_baseline(run_dir, ds.name, preset_name)
        if found is None:
            log.warning("baseline 'latest': no earlier finished run of this dataset and preset; no verdict")
        baseline = str(found) if found else None
    report = report_task(str(run_dir), baseline, thresholds)
    timings["report_end"] = time.perf_counter() - t_start
    n_failed = sum(r["status"] != "ok" for r in case_rows)
    if stopper is not None:
        stopper.join()
    wall = time.perf_counter() - t_start
    summary = {
        "run_id": run_id, "run_dir": str(run_dir), "per_case": written["per_case"], "per_view": written["per_view"],
        "report": report["index_html"], "cases": len(case_rows), "ok": len(case_rows) - n_failed,
        "failed": n_failed, "cached": sum(e["cached"] for e in entries), "computed": len(jobs),
        "actors": n_actors, "actors_replaced": replaced, "wall_seconds": wall, "compute_seconds": compute_seconds,
        "case_seconds": job_seconds, "case_spans": spans, "timings": timings,
        "baseline": baseline, "regressed": report["regressed"], "verdict_md": report["verdict_md"],
        "verdict_markdown": report["verdict_markdown"],
        "errors": {f"{r['variant']}/{r['case']}/seed{r['seed']}": r["error"] for r in case_rows if r["error"]},
    }
    log.info(f"{summary['ok']} ok, {n_failed} failed ({summary['cached']} cached) in {wall:.1f} s; "
             f"per_case: {written['per_case']}; report: {report['index_html']}")
    return summary
