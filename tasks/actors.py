"""Ray actors that run complete reconstructions, and the pool that feeds them and survives their deaths.

`ReconstructionActor` loads the priors once per distinct prior config (Zero-1-to-3, Stable Diffusion,
CLIP) and keeps them for every case it is given. One actor per GPU (`num_gpus=1`; `cases_per_gpu` N: N actors
share each GPU with `num_gpus=1/N`, Ray's fractional GPUs) when the cluster has
GPUs, else CPU actors (1 CPU each by default).

`ActorPool.run(jobs)` yields `(job, outcome)` as cases finish. A case whose actor dies (process crash,
`ray.kill`, out-of-memory kill) gets a fresh actor and is retried, up to `max_retries` times; so is a case
that ran out of memory. Any other error a case raises is permanent (retrying it would fail the same way):
the case is recorded as failed at once with its one-line message. Reconstructions resume from their own
checkpoints, so a retry continues where the dead actor stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import itertools
import os
import shutil
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from c123_pipeline.tasks.ray_cluster import quiet_env

quiet_env()
import ray  # noqa: E402  (after the environment Ray reads at import)

from c123.atomic import is_url  # noqa: E402
from c123.errors import C123Error, WeightsMissingError  # noqa: E402
from c123.progress import Event, Notice, ProgressFn  # noqa: E402
from c123_pipeline.tasks import cache, storage  # noqa: E402


@dataclass
class Job:
    """One (case, variant, seed) for an actor: the case, its resolved config and its output folder."""

    index: int
    """Position in the run's plan."""
    case: Any
    """The dataset's Case (picklable: the actor loads the input itself)."""
    variant: str
    """Variant folder name (variant, plus the weight shape when it is not the default)."""
    seed: int
    config: dict
    """ReconstructConfig.to_dict() of the resolved config."""
    out_dir: str
    """Case folder (inside the run folder)."""
    key: str
    """Cache key the finished folder will carry."""
    dataset: str = ""
    inputs: dict[str, tuple[str, bytes]] | None = None
    """{case attribute (rgba_path, ...): (file name, bytes)} when the nodes share no disk (a run folder on
    object storage): the actor computes from these instead of the dataset's paths."""

    @property
    def case_id(self) -> str:
        return self.case.id

    def label(self) -> str:
        return f"{self.case_id} ({self.variant}, seed {self.seed})"


@dataclass
class Outcome:
    """What became of a job: ok with its result.json, or failed with a one-line error."""

    status: str = "ok"
    """'ok' or 'failed'."""
    error: str | None = None
    result: dict | None = None
    """The case's result.json when ok."""
    retryable: bool = False
    """The failure may pass on another attempt (the actor died, memory ran out)."""
    seconds: float = 0.0
    attempts: int = 1
    pid: int | None = None
    slot: int | None = None
    """Pool slot (actor) that ran the last attempt."""
    span: tuple[float, float] | None = None
    """(start, end) epoch seconds of the last attempt, for the overhead timeline."""
    traceback: str | None = None
    """Where an unexpected error came from (for the logs, not the tables)."""
    node_id: str | None = None
    """Ray node of the actor that ran the last attempt."""
    stops_run: bool = False
    """The failure will be every case's (model weights missing or damaged): the pool hands out no more cases."""
    peak_memory_gb: float = float("nan")
    """torch.cuda.max_memory_allocated of the last attempt in GB (NaN without CUDA)."""


WorkFn = Callable[[Job, "PriorsCache", ProgressFn], dict]

_LISTENERS: list[Callable[[dict], None]] = []


def add_progress_listener(fn: Callable[[dict], None]) -> None:
    """Receive the pool's progress snapshots (in this process), e.g. for a live display."""
    _LISTENERS.append(fn)


def remove_progress_listener(fn: Callable[[dict], None]) -> None:
    if fn in _LISTENERS:
        _LISTENERS.remove(fn)


def emit_progress(snapshot: dict) -> None:
    for fn in list(_LISTENERS):
        try:
            fn(snapshot)
        except Exception:  # a display must never break the run
            pass


# ---- the work a job does -----------------------------------------------------------------------
class PriorsCache:
    """Loaded priors per prior config (the models and how SDS uses them) and device, kept for the actor's life."""

    def __init__(self):
        self._loaded: dict[str, object] = {}

    def get(self, cfg):
        """The `c123.reconstruct.Priors` for `cfg`, loading what is missing (once)."""
        import json

        from c123.provenance import resolve_device
        from c123.priors.loading import load_priors

        device = resolve_device(cfg.train.device)
        key = json.dumps({"prior": cfg.to_dict()["prior"], "preset": cfg.preset, "device": str(device)},
                         sort_keys=True, default=str)
        self._loaded[key] = load_priors(cfg, device, self._loaded.get(key))
        return self._loaded[key]

    def __len__(self) -> int:
        return len(self._loaded)


def reconstruct_case(job: Job, priors: PriorsCache, progress: ProgressFn) -> dict:
    """The default work: load the case's input and run the full reconstruction into job.out_dir."""
    from c123.config import from_dict
    from c123.reconstruct import reconstruct

    cfg = from_dict(job.config)
    inp = job.case.load(cfg)  # a plain photo is preprocessed here (cached by its bytes)
    return reconstruct(inp, cfg, job.out_dir, priors=priors.get(cfg), progress=progress)


INPUT_ROLES = ("rgba_path", "mask_path", "depth_path")


def input_bytes(case) -> dict[str, tuple[str, bytes]]:
    """The case's input files as {role: (file name, bytes)}, read here (the driver) for a node without them."""
    return {role: (Path(path).name, Path(path).read_bytes())
            for role in INPUT_ROLES if (path := getattr(case, role, None)) is not None and Path(path).is_file()}


@contextlib.contextmanager
def local_case_folder(job: Job) -> Iterator[Job]:
    """The job to compute: itself for a local run folder; for an object-storage one, the same job computed in
    this node's scratch folder (inputs written there from job.inputs), whose files are uploaded to job.out_dir
    when the work succeeds (cache_key, written after this, commits the upload)."""
    if not is_url(job.out_dir):
        yield job
        return
    scratch = storage.scratch_folder(job.out_dir)
    paths = {}
    for role, (name, data) in (job.inputs or {}).items():
        paths[role] = scratch / "input" / role / name
        paths[role].parent.mkdir(parents=True, exist_ok=True)
        paths[role].write_bytes(data)
    case = dataclasses.replace(job.case, **paths) if paths else job.case
    yield dataclasses.replace(job, case=case, out_dir=str(scratch / "out"), inputs=None)
    storage.upload_folder(scratch / "out", job.out_dir)
    shutil.rmtree(scratch, ignore_errors=True)  # uploaded: the checkpoints are no longer needed


def resolve_work_fn(spec: str | Callable | None) -> WorkFn:
    """None -> `reconstruct_case`; 'module:function' -> that function (instrumented runs, fault tests)."""
    if spec is None:
        return reconstruct_case
    if callable(spec):
        return spec
    module, _, name = str(spec).partition(":")
    if not name:
        raise C123Error(f"work function '{spec}' is not module:function")
    return getattr(importlib.import_module(module), name)


def is_transient(err: BaseException) -> bool:
    """Errors another attempt may not meet: running out of (GPU) memory. Everything else a case raises
    (bad input, a bug, a config that cannot work) fails the same way again."""
    import torch

    return isinstance(err, (MemoryError, torch.cuda.OutOfMemoryError))


def error_line(err: BaseException) -> str:
    """One line naming the error type, its message and (for unexpected errors) where it was raised."""
    msg = " ".join(str(err).split()) or repr(err)
    if isinstance(err, C123Error):
        return f"{type(err).__name__}: {msg}"
    tb = traceback.extract_tb(err.__traceback__)
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(err).__name__}: {msg}{where}"


# ---- the actor ---------------------------------------------------------------------------------
@ray.remote(concurrency_groups={"status": 1}, max_restarts=0)
class ReconstructionActor:
    """Holds the loaded priors; `run(job)` does one complete reconstruction and returns its outcome."""

    def __init__(self, work_fn: str | None = None, num_threads: int | None = None):
        from c123.provenance import offline_defaults

        offline_defaults()
        self.base_threads = int(num_threads) if num_threads else None
        # thread counts the pool asked for, by dispatch token: a request may arrive before its case starts
        self.wants: dict[int, int] = {}
        self.token: int | None = None
        if self.base_threads:
            import torch
            torch.set_num_threads(self.base_threads)
        self.work = resolve_work_fn(work_fn)
        self.priors = PriorsCache()
        self.lock = threading.Lock()
        self.state: dict = {"case": None, "pid": os.getpid()}
        self.cases_done = 0

    def warm(self, config: dict) -> str | None:
        """Import the reconstruction and load the priors of `config` ahead of the first case, so that a case's
        seconds are its own work (the first case on an actor no longer carries the imports and the loading).
        A failure here is met again, and reported, by the case that needs those priors; it is returned too."""
        try:
            from c123.config import from_dict

            self.priors.get(from_dict(config))
        except Exception as err:  # noqa: BLE001 - the case reports it (see above)
            return error_line(err)
        return None

    def run(self, job: Job, token: int | None = None) -> Outcome:
        """Reconstruct one job; never raises for a failed case (the outcome says why).

        token: the pool's id of this dispatch, which `set_threads` names."""
        started, started_at = time.perf_counter(), time.time()
        with self.lock:
            self.state = {"case": job.case_id, "variant": job.variant, "seed": job.seed,
                          "stage": "load", "step": 0, "total": 0, "pid": os.getpid()}
            self.token = token
            self.wants = {token: self.wants[token]} if token in self.wants else {}
        self._apply_threads()

        def progress(event: Event) -> None:
            if not isinstance(event, Notice):  # a notice carries no progress
                with self.lock:
                    self.state.update(stage=event.label, step=event.step, total=event.total)
            self._apply_threads()

        outcome = Outcome(pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id())
        try:
            with local_case_folder(job) as local_job, device_peak(outcome):
                outcome.result = self.work(local_job, self.priors, progress)
            cache.mark_done(job.out_dir, job.key)
        except C123Error as err:
            outcome.status, outcome.error = "failed", error_line(err)
            outcome.stops_run = isinstance(err, WeightsMissingError)
        except Exception as err:  # noqa: BLE001 - recorded; the pool retries only transient ones
            outcome.status, outcome.error, outcome.retryable = "failed", error_line(err), is_transient(err)
            outcome.traceback = traceback.format_exc(limit=20)
        outcome.seconds = time.perf_counter() - started
        outcome.span = (started_at, time.time())
        with self.lock:
            self.state = {"case": None, "pid": os.getpid()}
        self.cases_done += 1
        return outcome

    def _apply_threads(self) -> None:
        """In the thread that computes: take up the thread count `set_threads` asked for (CPU actors only)."""
        if not self.base_threads:
            return
        import torch

        with self.lock:
            want = self.wants.get(self.token, self.base_threads)
        if torch.get_num_threads() != want:
            torch.set_num_threads(want)

    @ray.method(concurrency_group="status")
    def set_threads(self, token: int, n: int) -> None:
        """Run the case of dispatch `token` with `n` CPU threads from its next step (or from its start, when it
        has not started yet); other cases keep the base count (the pool's tail rebalancing)."""
        with self.lock:
            self.wants[token] = max(1, int(n))

    @ray.method(concurrency_group="status")
    def status(self) -> dict:
        """What the actor is doing now (answered while `run` is busy)."""
        with self.lock:
            return dict(self.state)

    @ray.method(concurrency_group="status")
    def pid(self) -> int:
        return os.getpid()


# ---- the pool ----------------------------------------------------------------------------------
class DeferredSignals:
    """SIGINT and SIGTERM that arrive while the pool waits in `ray.wait` are handled just after the wait.

    Ray turns an exception raised by a signal handler inside its wait into a SystemError (only a plain
    KeyboardInterrupt passes), which would hide Prefect's TerminationSignal and c123's interrupt. So while the
    pool runs, the handlers only note the signal; `check()` (between waits, within `poll_seconds`) then calls
    the handler that was installed before, where its exception propagates normally."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.previous: dict[int, object] = {}
        self.pending: list[int] = []

    def __enter__(self) -> "DeferredSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {sig: signal.signal(sig, self._note) for sig in self.SIGNALS}
        return self

    def _note(self, signum, _frame) -> None:
        self.pending.append(signum)

    def check(self) -> None:
        """Handle a signal noted during the last wait, as its own handler would have."""
        if not self.pending:
            return
        signum = self.pending.pop(0)
        handler = self.previous.get(signum)
        self.__exit__()
        if callable(handler):
            handler(signum, None)
        elif signum == signal.SIGINT and handler != signal.SIG_IGN:
            raise KeyboardInterrupt
        elif handler != signal.SIG_IGN:
            os.kill(os.getpid(), signum)  # the default action, with the default handler back in place

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}



@contextlib.contextmanager
def device_peak(outcome: Outcome):
    """Record in `outcome` the peak CUDA memory of the tensors of what runs inside (the actor's process is its
    own CUDA context, so with fractional GPUs too the figure is this case's alone); nothing without CUDA."""
    import torch

    on_cuda = torch.cuda.is_available()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats()
    try:
        yield
    finally:
        if on_cuda:
            outcome.peak_memory_gb = torch.cuda.max_memory_allocated() / 1e9


def actor_resources(num_gpus_available: float, num_cpus_per_actor: float = 1.0, cases_per_gpu: int = 1) -> dict:
    """Ray options of one actor: 1/cases_per_gpu of a GPU (Ray's fractional GPUs: that many actors share each
    card) when the cluster has GPUs, else `num_cpus_per_actor` CPUs."""
    if num_gpus_available >= 1:
        return {"num_gpus": 1 / cases_per_gpu if cases_per_gpu > 1 else 1, "num_cpus": 1}
    return {"num_gpus": 0, "num_cpus": num_cpus_per_actor}


def default_num_actors(num_cpus: float, num_gpus: float, num_cpus_per_actor: float = 1.0,
                       cases_per_gpu: int = 1) -> int:
    """`cases_per_gpu` actors per GPU, else one per `num_cpus_per_actor` CPUs (at least one)."""
    if num_gpus >= 1:
        return int(num_gpus) * cases_per_gpu
    return max(1, int(num_cpus // max(num_cpus_per_actor, 1e-9)))


def pool_shape(num_cpus: float, num_gpus: float, jobs: int, num_actors: int | None,
               cases_per_gpu: int = 1) -> tuple[int, dict]:
    """(actors, Ray options of each) for `jobs` cases: `num_actors` (default `cases_per_gpu` per GPU, else one per
    CPU), no more than there are cases; CPU actors share the CPUs when there are more actors than CPUs."""
    n = max(1, min(jobs, num_actors or default_num_actors(num_cpus, num_gpus, cases_per_gpu=cases_per_gpu)))
    resources = actor_resources(num_gpus, cases_per_gpu=cases_per_gpu)
    if not resources["num_gpus"]:
        resources["num_cpus"] = min(1.0, num_cpus / n) if num_cpus else 1.0
    return n, resources


def resolve_cases_per_gpu(requested: int | str | None, config: dict, num_gpus: float, log=None) -> int:
    """Cases per GPU for a run of `config` on a cluster with `num_gpus` GPUs: 1 unless asked; 'auto' as many as
    the measured budget (c123.memory.case_budget) fits in a GPU's free memory; a number is refused (C123Error
    with the figures) when they cannot fit. CPU clusters: 1."""
    if requested in (None, 1, "1") or num_gpus < 1:
        return 1
    from c123 import memory
    from c123.config import from_dict
    from c123_pipeline.tasks.ray_cluster import gpu_memory_bytes

    budget = memory.case_budget(from_dict(config))
    gpu_bytes = gpu_memory_bytes()
    n = memory.cases_per_gpu(budget, requested, gpu_bytes)
    if log is not None:
        known = f"{gpu_bytes / 1e9:.1f} GB free per GPU" if gpu_bytes else "GPU memory unknown (not checked)"
        log.info(f"{n} case(s) per GPU: a case needs {budget.total / 1e9:.1f} GB, {known}")
    return n


def tail_threads(base: int, running: int, idle: int) -> int:
    """Threads per running CPU actor once the queue is empty: the idle actors' CPUs shared among the busy ones."""
    return max(base, base * (running + idle) // max(running, 1))


def _kill(actor) -> None:
    """End an actor for good; one that is already gone (dead, or its cluster stopped) is fine."""
    with contextlib.suppress(Exception):
        ray.kill(actor, no_restart=True)


class ActorPool:
    """A fixed number of ReconstructionActors fed from a job queue; dead actors are replaced."""

    def __init__(self, num_actors: int, *, resources: dict | None = None, work_fn: str | None = None,
                 max_retries: int = 2, poll_seconds: float = 1.0, logger=None, warm_config: dict | None = None,
                 share_idle_threads: bool = False):
        self.num_actors = max(1, int(num_actors))
        self.share_idle_threads = share_idle_threads
        """CPU actors still computing take over the idle actors' threads once no case waits (`_rebalance`): a
        faster tail, but a case's float rounding then depends on when it got them (thread counts change how
        CPU kernels split their sums), so two identical runs may differ in the last digits. Off by default."""
        self.warm_config = warm_config
        """Config whose priors every new actor (a replacement too) loads before its first case."""
        self.resources = resources or {"num_cpus": 1, "num_gpus": 0}
        self.work_fn = work_fn
        self.max_retries = max_retries
        self.poll_seconds = poll_seconds
        self.log = logger
        self.actors: list = []
        self.replaced = 0
        self.base_threads = None if self.resources.get("num_gpus") else max(1, int(self.resources.get("num_cpus", 1)))
        self._tokens = itertools.count()
        self._token: dict[int, int] = {}  # slot -> dispatch token of the case it runs
        self._asked: dict[int, tuple[int, int]] = {}  # slot -> (token, threads) last sent
        self._warming: list = []  # the actors' warm-up calls (see `wait_ready`)

    def _new_actor(self):
        actor = ReconstructionActor.options(**self.resources).remote(self.work_fn, self.base_threads)
        if self.warm_config is not None:  # runs before any case: an actor runs its calls in order
            self._warming.append(actor.warm.remote(self.warm_config))
        return actor

    def _rebalance(self, running: dict, idle: list) -> None:
        """Once no case waits, CPU actors still computing take over the idle actors' threads (the tail of a run
        of equal cases is otherwise one actor working while the others wait)."""
        if not self.share_idle_threads or not self.base_threads or not running:
            return
        n = tail_threads(self.base_threads, len(running), len(idle))
        for slot, _job, _started in running.values():
            token = self._token[slot]
            if self._asked.get(slot) != (token, n) and n != self.base_threads:
                self.actors[slot].set_threads.remote(token, n)
                self._asked[slot] = (token, n)

    def start(self) -> "ActorPool":
        """Create the actors (once; a pool started ahead of its run is entered as it is)."""
        if not self.actors:
            self.actors = [self._new_actor() for _ in range(self.num_actors)]
        return self

    def trim(self, num_actors: int) -> None:
        """Keep only the first `num_actors` actors (a pool started before the cases to compute were known)."""
        keep = max(1, num_actors)
        for actor in self.actors[keep:]:
            _kill(actor)
        self.actors = self.actors[:keep]
        self.num_actors = len(self.actors)

    def shutdown(self) -> None:
        for actor in self.actors:
            _kill(actor)
        self.actors = []

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every actor has started and loaded its priors (or `timeout`); a failed start is left to
        `run` to handle."""
        refs = [actor.pid.remote() for actor in self.actors] + self._warming
        ray.wait(refs, num_returns=len(refs), timeout=timeout)

    def __enter__(self) -> "ActorPool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def _replace(self, slot: int) -> None:
        _kill(self.actors[slot])
        self.actors[slot] = self._new_actor()
        self.replaced += 1

    def _info(self, msg: str) -> None:
        if self.log is not None:
            self.log.warning(msg)

    def run(self, jobs: list[Job]) -> Iterator[tuple[Job, Outcome]]:
        """Yield (job, outcome) for every job, in completion order."""
        if not self.actors:
            self.start()
        with DeferredSignals() as signals:
            yield from self._dispatch(jobs, signals)

    def _dispatch(self, jobs: list[Job], signals: DeferredSignals) -> Iterator[tuple[Job, Outcome]]:
        """The pool's loop: hand out jobs to idle actors, collect outcomes, retry the transient failures."""
        queue = deque(jobs)
        attempts: dict[int, int] = {}
        running: dict = {}  # ObjectRef -> (slot, job, started)
        idle = list(range(len(self.actors)))
        done = failed = 0
        total = len(jobs)
        last_emit = 0.0
        while queue or running:
            while idle and queue:
                slot, job = idle.pop(0), queue.popleft()
                attempts[job.index] = attempts.get(job.index, 0) + 1
                self._token[slot] = next(self._tokens)
                running[self.actors[slot].run.remote(job, self._token[slot])] = (slot, job, time.time())
            if not queue:
                self._rebalance(running, idle)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_seconds)
            signals.check()
            for ref in ready:
                slot, job, started = running.pop(ref)
                attempt = attempts[job.index]
                try:
                    outcome = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.ObjectLostError) as err:
                    # RayActorError covers ActorDiedError and ActorUnschedulableError/unavailable actors
                    reason = " ".join(str(err).split())[:300]
                    outcome = Outcome("failed", f"{type(err).__name__}: the actor running this case died ({reason})",
                                      retryable=True, seconds=time.time() - started)
                    self._info(f"actor {slot} died on {job.label()}, attempt {attempt}: replacing it")
                    self._replace(slot)
                except ray.exceptions.RayTaskError as err:  # the actor's own code failed (not the case's work)
                    cause = err.cause if getattr(err, "cause", None) else err
                    outcome = Outcome("failed", error_line(cause), retryable=is_transient(cause),
                                      seconds=time.time() - started)
                idle.append(slot)
                if outcome.status != "ok" and outcome.retryable and attempt <= self.max_retries:
                    self._info(f"retrying {job.label()} after: {outcome.error}")
                    queue.appendleft(job)
                    continue
                outcome = dataclasses.replace(outcome, attempts=attempt, slot=slot)
                done += 1
                failed += outcome.status != "ok"
                yield job, outcome
                if outcome.stops_run and queue:  # the next cases would fail the same way, one by one
                    self._info(f"not starting the {len(queue)} remaining case(s): {outcome.error}")
                    while queue:
                        done, failed = done + 1, failed + 1
                        yield queue.popleft(), Outcome("failed", f"not run: {outcome.error}", attempts=0)
            if time.time() - last_emit >= self.poll_seconds or ready:
                last_emit = time.time()
                emit_progress({"total": total, "done": done, "failed": failed, "replaced": self.replaced,
                               "actors": self._statuses(running)})
        emit_progress({"total": total, "done": done, "failed": failed, "replaced": self.replaced, "actors": []})

    def _statuses(self, running: dict) -> list[dict]:
        if not _LISTENERS:
            return []
        busy = {slot: job for slot, job, _ in running.values()}
        refs = {slot: self.actors[slot].status.remote() for slot in busy}
        out = []
        for slot, ref in refs.items():
            try:
                state = ray.get(ref, timeout=2)
            except Exception:
                state = {}
            out.append({"slot": slot, "case": busy[slot].case_id, "variant": busy[slot].variant,
                        "seed": busy[slot].seed, **{k: state.get(k) for k in ("stage", "step", "total")}})
        return sorted(out, key=lambda s: s["slot"])
