"""The metric executor of a `benchmark` flow run: metrics of finished cases, read back or computed as Prefect
tasks while later cases still run."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from prefect.futures import PrefectFuture

from c123.config import TINY_MODEL_PRESETS
from c123_pipeline.flows.planning import Entry, RunPlan
from c123_pipeline.tasks import storage
from c123_pipeline.tasks.metrics import (cached_metrics, case_metrics_task, failed_case_metrics, load_metric_models,
                                         metrics_key)

METRICS_DEVICE_ENV = "C123_METRICS_DEVICE"


class MetricStep:
    """Metrics of finished cases: cached ones read back, others computed as Prefect tasks while later cases
    still run. The metric models load in a background thread, only when some metric has to be computed."""

    def __init__(self, plan_: RunPlan):
        self.plan = plan_
        self.loader = ThreadPoolExecutor(max_workers=1)
        self._models: Future | None = None
        self.pending: dict[int, PrefectFuture] = {}
        self.values: dict[int, dict] = {}

    def models(self, after: Callable[[], object] | None = None) -> Future:
        """The metric models' future; `after` (first call only) runs first in the loader thread."""
        if self._models is None:
            self._models = self.loader.submit(self._load, after)
        return self._models

    def _load(self, after: Callable[[], object] | None):
        if after is not None:
            after()
        if self.plan.spec.preset in TINY_MODEL_PRESETS:  # the tiny CLIP is written on first use
            from c123.priors.tiny import write_tiny_models  # diffusers and transformers: only for the tiny presets
            write_tiny_models(Path(self.plan.entries[0].cfg.prior.clip_model).expanduser().parent)
        return load_metric_models(self.plan.protocol, os.environ.get(METRICS_DEVICE_ENV, "cpu"))

    def submit(self, entry: Entry) -> None:
        """Start (or read back) the metrics of a finished case; failed cases have none."""
        if entry.outcome.status != "ok":
            return
        folder = storage.join(self.plan.run_dir, entry.case_dir)
        key = metrics_key(entry.key, self.plan.protocol, entry.case.scene, entry.case.gso)
        found = cached_metrics(folder, key)
        if found is not None:
            self.values[entry.index] = found
        else:
            self.pending[entry.index] = case_metrics_task.submit(str(folder), entry.outcome.result,
                                                                 self.models().result(), key, entry.case.scene,
                                                                 entry.case.gso)

    def result(self, entry: Entry) -> dict:
        """The metric columns of an entry (NaN with the reason for a failed case)."""
        if entry.index in self.pending:
            return self.pending[entry.index].result()
        if entry.index in self.values:
            return self.values[entry.index]
        return failed_case_metrics(self.plan.protocol, entry.cfg.train.eval_views, entry.cfg.train.eval_size)

    def close(self) -> None:
        self.loader.shutdown(wait=False)
