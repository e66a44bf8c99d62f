"""The Ray cluster and actor pool a `benchmark` flow run computes on, from taking them to stopping them.

A start made ahead by the command (`c123 evaluate`, tasks/warm_start.py) is taken as the run's; without one
(a served deployment's run) the run starts (or joins) Ray and its pool itself. Either way the run stops them in
the background once its cases are done, while metrics and the report are written (`RunCluster.stop`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from c123.config import ReconstructConfig
from c123.config_checks import check_device_exists
from c123_pipeline.flows.spec import BenchmarkSpec
from c123_pipeline.tasks import warm_start
from c123_pipeline.tasks.ray_cluster import ClusterInfo, ensure_ray, shutdown_ray

if TYPE_CHECKING:
    from c123_pipeline.tasks.actors import ActorPool


def warm_config(spec: BenchmarkSpec, cfg: ReconstructConfig) -> dict | None:
    """The config whose priors the actors load as they start: the first case's, for the reconstruction (a
    `work_fn` replacing it may need none)."""
    return cfg.to_dict() if spec.work_fn is None else None


@dataclass
class RunCluster:
    """Ray and the actor pool of one flow run (`take` it first: from then on the run stops it)."""

    spec: BenchmarkSpec
    warm: warm_start.WarmStart | None = None
    """The start made ahead for this run's parameters, if any."""
    info: ClusterInfo | None = None

    @classmethod
    def take(cls, spec: BenchmarkSpec) -> RunCluster:
        """The run's cluster: the pending start made for `spec` (an error before this: the command stops it)."""
        return cls(spec, warm_start.take(spec))

    @property
    def started_ahead(self) -> bool:
        """The cluster and actors were started before the flow run."""
        return self.warm is not None

    def cluster(self, configs: list[ReconstructConfig]) -> ClusterInfo:
        """The cluster, once started; every config's device must exist there (not necessarily here)."""
        self.info, pool = self.warm.ready() if self.warm else (ensure_ray(), None)
        for cfg in configs:
            check_device_exists(cfg.train.device, int(self.info.num_gpus))
        return self.info

    def pool(self, first: ReconstructConfig, jobs: int, log) -> ActorPool:
        """The actor pool for `jobs` cases (a pool started ahead is trimmed to them); call `cluster` first."""
        # imports Ray: only when a case is computed
        from c123_pipeline.tasks.actors import ActorPool, pool_shape, resolve_cases_per_gpu

        per_gpu = 1
        if self.warm is None:  # (a pool started ahead was shaped by the same rule)
            per_gpu = resolve_cases_per_gpu(self.spec.cases_per_gpu, first.to_dict(), self.info.num_gpus, log)
        actors, resources = pool_shape(self.info.num_cpus, self.info.num_gpus, jobs, self.spec.num_actors, per_gpu)
        if self.warm is None:
            pool = ActorPool(actors, resources=resources, work_fn=self.spec.work_fn, max_retries=self.spec.max_retries,
                             warm_config=warm_config(self.spec, first))
        else:
            pool = self.warm.ready()[1]
            pool.trim(actors)
        pool.log, pool.share_idle_threads = log, self.spec.share_idle_threads
        return pool

    def stop(self) -> threading.Thread | None:
        """Stop the actors and a cluster this run started, in the background; the thread to join to wait for it
        (one started ahead is awaited by whoever started it)."""
        if self.warm is not None:  # its keeper thread stops the pool and the cluster it started
            return self.warm.release()
        if self.info is not None and self.info.started:
            stopper = threading.Thread(target=shutdown_ray, name="ray-shutdown")
            stopper.start()
            return stopper
        return None
