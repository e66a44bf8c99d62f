"""The plan of a `benchmark` flow run: the checked spec, the run folder locked and its run.json written, and
one entry per (case, variant, seed) with the outcome of those already finished (reused without compute)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from c123.config import ReconstructConfig
from c123.metrics import MetricProtocol
from c123_pipeline.datasets.case import Case
from c123_pipeline.datasets.registry import Dataset
from c123_pipeline.flows.spec import BenchmarkSpec, case_config, check_spec, elevation_source, variant_folder
from c123_pipeline.tasks import cache, storage
from c123_pipeline.tasks.run_folder import RunLock, inside, prepare_run_json

if TYPE_CHECKING:
    from c123_pipeline.tasks.actors import Outcome


@dataclass
class Entry:
    """One (case, variant, seed) of the run and what became of it."""

    index: int
    case: Case
    cfg: ReconstructConfig
    case_dir: str
    """Case folder relative to the run folder."""
    key: str
    elevation_source: str = "config"
    """Where the case's assumed elevation came from (flows.spec.ELEVATION_SOURCES)."""
    outcome: Outcome | None = None
    """Once known (read back for a cached case)."""
    cached: bool = False


@dataclass
class RunPlan:
    """Everything the run does, fixed before the first case is dispatched."""

    spec: BenchmarkSpec
    dataset: Dataset
    run_dir: Path | str
    """A local folder or an fsspec URL (tasks/storage.py)."""
    run_id: str
    version: str
    protocol: MetricProtocol
    """Resolved: the CLIP, the number of views and the LPIPS backbone chosen and present on this machine."""
    entries: list[Entry]
    baseline: Path | str | None
    lock: RunLock
    timings: dict[str, float] = field(default_factory=dict)


def plan(spec: BenchmarkSpec, log, t_start: float) -> RunPlan:
    """The checks, then the run folder (locked, its run.json) and one entry per (case, variant, seed), with the
    outcome of those already finished."""
    checked = check_spec(spec, log)
    ds, run_dir, first = checked.dataset, checked.run_dir, checked.first
    lock = RunLock(run_dir).acquire()
    try:
        version = cache.code_version()
        info = prepare_run_json(run_dir, {
            "run_id": f"{ds.name}-{spec.preset}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-"
                      f"{uuid.uuid4().hex[:6]}",
            "dataset": ds.name, "dataset_root": str(ds.root) if ds.root else None, "preset": spec.preset,
            "variants": checked.variants, "seeds": checked.seeds, "cases": [c.id for c in ds.cases],
            "overrides": list(spec.overrides or []), "elevation": spec.elevation, "code_version": version,
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
                case_cfg = case_config(cfg, case, spec.elevation)
                entries.append(Entry(len(entries), case, case_cfg, rel, cache.cache_key(case, case_cfg, version),
                                     elevation_source(case, spec.elevation, case_cfg)))
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
    from c123_pipeline.tasks.actors import Outcome  # imports Ray: only when a finished case is found

    folder = storage.join(run_dir, entry.case_dir)
    if cache.is_done(folder, entry.key):
        try:
            entry.outcome, entry.cached = Outcome(result=cache.load_result(folder)), True
        except (OSError, ValueError):
            entry.outcome = None
