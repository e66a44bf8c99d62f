"""Ray and the actor pool started ahead of the flow run, so that their start-up overlaps Prefect's.

Starting a local Ray cluster takes seconds, and an actor's first case used to carry the imports of the
reconstruction and the loading of the priors. `c123 evaluate` (and benchmarks/bench_orchestration.py) therefore
`begin()` a WarmStart once the run's spec is checked (a bad spec starts nothing), with the number of cases and the
first case's config, and then start the flow: while Prefect's API starts, the cluster starts and the actors
load their priors. The flow's dispatch `take()`s it; a run that finds nothing to compute, or a spec other than the
one it was started for, releases it. A flow run without one (a served deployment's) starts Ray itself.

Ray's processes are killed when the *thread* that started them ends (they are started with PR_SET_PDEATHSIG), so
the thread that starts the cluster lives until it has stopped it (`ClusterKeeper`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

_PENDING: WarmStart | None = None
_PENDING_LOCK = threading.Lock()


class ClusterKeeper(threading.Thread):
    """Starts (or joins) the Ray cluster and creates the actor pool; stays alive until `stop()`, and then stops
    both."""

    def __init__(self, build_pool):
        super().__init__(name="c123-ray-keeper", daemon=True)
        self.build_pool = build_pool
        self.cluster = self.pool = self.error = None
        self.stopping, self.ready = threading.Event(), threading.Event()

    def run(self) -> None:
        from c123_pipeline.tasks.ray_cluster import ensure_ray, shutdown_ray

        try:
            # ray.init warns that it sets no SIGTERM handler off the main thread: the driver keeps its own anyway
            with _quiet("ray._private.worker"):
                self.cluster = ensure_ray()
            if not self.stopping.is_set():
                self.pool = self.build_pool(self.cluster)
        except BaseException as err:  # noqa: BLE001 - raised again where the cluster is asked for (`ready`)
            self.error = err
        finally:
            self.ready.set()
        self.stopping.wait()
        if self.pool is not None:
            self.pool.shutdown()
        if self.cluster is not None and self.cluster.started:
            shutdown_ray()

    def stop(self) -> "ClusterKeeper":
        self.stopping.set()
        return self


@dataclass
class WarmStart:
    """A cluster and actor pool being started for a run with these parameters (BenchmarkSpec's names)."""

    num_actors: int | None = None
    work_fn: str | None = None
    max_retries: int = 2
    jobs: int = 0
    """Cases the run may compute (its actors are at most this many)."""
    config: dict | None = None
    """ReconstructConfig.to_dict() of the first case: the priors the actors load ahead."""
    cases_per_gpu: int | str | None = None
    keeper: ClusterKeeper | None = field(default=None, repr=False)

    def begin(self) -> "WarmStart":
        """Start the cluster and the actors in the background; the next flow run takes them."""
        global _PENDING
        self.keeper = ClusterKeeper(self._build_pool)
        self.keeper.start()
        with _PENDING_LOCK:
            previous, _PENDING = _PENDING, self
        if previous is not None:
            previous.release()
        return self

    def _build_pool(self, cluster):
        from c123_pipeline.tasks.actors import ActorPool, pool_shape, resolve_cases_per_gpu

        per_gpu = resolve_cases_per_gpu(self.cases_per_gpu, self.config, cluster.num_gpus)
        n, resources = pool_shape(cluster.num_cpus, cluster.num_gpus, self.jobs, self.num_actors, per_gpu)
        return ActorPool(n, resources=resources, work_fn=self.work_fn, max_retries=self.max_retries,
                         warm_config=self.config).start()

    def matches(self, spec) -> bool:
        return ((self.num_actors, self.work_fn, self.max_retries, self.cases_per_gpu)
                == (spec.num_actors, spec.work_fn, spec.max_retries, spec.cases_per_gpu))

    def ready(self, timeout: float | None = None):
        """(ClusterInfo, ActorPool) once started; the start's error is raised here."""
        self.keeper.ready.wait(timeout)
        if self.keeper.error is not None:
            raise self.keeper.error
        return self.keeper.cluster, self.keeper.pool

    def release(self) -> threading.Thread:
        """Stop the pool and the cluster (if this start started it) in the background; join the returned thread
        to wait for it."""
        global _PENDING
        with _PENDING_LOCK:
            if _PENDING is self:
                _PENDING = None
        return self.keeper.stop()


def take(spec) -> WarmStart | None:
    """The pending start made for `spec`'s parameters (a flow run adopts it), else None; a pending start for
    other parameters is released."""
    global _PENDING
    with _PENDING_LOCK:
        pending, _PENDING = _PENDING, None
    if pending is not None and not pending.matches(spec):
        pending.release()
        return None
    return pending


class _quiet:
    """A logger raised to ERROR for the duration."""

    def __init__(self, name: str):
        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
