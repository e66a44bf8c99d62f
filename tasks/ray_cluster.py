"""Start or join the Ray cluster the benchmark's actors live on, loopback-only and without outside calls.

- Default: a private local cluster (`address="local"`) bound to 127.0.0.1, no dashboard, usage stats off.
- `RAY_ADDRESS` (or `address=`) joins an existing cluster instead.
- Ray's minimal dashboard process reads `~/ray_bootstrap_config.yaml` and, when it is missing, probes the
  cloud metadata address 169.254.169.254. The Ray processes are therefore started with HOME pointing at a
  project folder holding that file (`{}`); the driver's HOME is restored right after `ray.init`, and the
  workers get the real HOME back through the job's runtime env (model caches, `~` in model paths).
- Ray 2.60 enables token authentication for new local clusters; the token lives in that folder too and
  RAY_AUTH_TOKEN_PATH points at it, so later drivers (a served flow run) can join with RAY_ADDRESS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from c123.atomic import write_atomic

RAY_CODE_ENV = "C123_RAY_CODE"
"""How the workers get the code: 'package' (uploaded as py_modules) or 'path' (this checkout on PYTHONPATH)."""
RAY_HOME_ENV = "C123_RAY_HOME"
"""Folder used as HOME of the Ray processes (default ~/.cache/c123/ray-home)."""

_LOCK = threading.Lock()
_STARTED_HERE = False
_REPO = Path(__file__).resolve().parent.parent


@dataclass
class ClusterInfo:
    """What `ensure_ray` found: `started` when this very call connected (started a local cluster or joined
    one), so the caller owns `shutdown_ray()` (which stops a local cluster, or only disconnects)."""

    address: str
    started: bool
    num_cpus: float
    num_gpus: float


def ray_home() -> Path:
    """The HOME of the Ray processes: holds ray_bootstrap_config.yaml and .ray/auth_token."""
    home = Path(os.environ.get(RAY_HOME_ENV) or Path("~/.cache/c123/ray-home").expanduser())
    home.mkdir(parents=True, exist_ok=True)
    boot = home / "ray_bootstrap_config.yaml"
    if not boot.is_file():
        write_atomic(boot, "{}\n")
    return home


def quiet_env() -> None:
    """Process-wide settings every Ray driver here needs (set before `import ray`)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")


def local_auth_env() -> None:
    """Token auth for a local cluster: our own token file, unless the user set RAY_AUTH_TOKEN(_PATH).

    RAY_AUTH_TOKEN_PATH stays set in this process, so subprocesses (a served flow run) can join."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return
    token = ray_home() / ".ray" / "auth_token"
    if not token.is_file():
        from ray._private.authentication.authentication_token_generator import generate_new_authentication_token
        write_atomic(token, generate_new_authentication_token(), mode=0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)


def worker_env(ship_code: bool = False) -> dict[str, str]:
    """Environment the Ray workers get back: the real HOME, offline model loading, and the code importable
    (this checkout on PYTHONPATH; when the code is shipped as packages, only the user's PYTHONPATH and the
    driver's code version)."""
    from c123.provenance import CODE_VERSION_ENV, code_version, offline_defaults

    offline_defaults()
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if ship_code:
        paths = [p for p in paths if Path(p).resolve() != _REPO]
    else:
        paths.insert(0, str(_REPO))
    env = {"HOME": os.environ.get("HOME", str(Path.home())), "HF_HUB_OFFLINE": os.environ["HF_HUB_OFFLINE"]}
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    if ship_code:
        env[CODE_VERSION_ENV] = code_version()
    for key in ("C123_TINY_MODELS", "C123_DATA", "C123_CACHE", "TORCH_HOME", "HF_HOME", "HF_HUB_CACHE",
                "OMP_NUM_THREADS"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


def ships_code(local: bool) -> bool:
    """Whether the workers get the code as packages (runtime_env py_modules) rather than this checkout's path:
    $C123_RAY_CODE ('package' or 'path'), by default 'package' when joining a cluster by address (its nodes
    need not have this checkout) and 'path' for the private local cluster (same machine, no upload)."""
    mode = os.environ.get(RAY_CODE_ENV) or ("path" if local else "package")
    if mode not in ("package", "path"):
        from c123.errors import C123Error
        raise C123Error(f"{RAY_CODE_ENV}={mode!r}: use 'package' (ship the code to the workers) or 'path'")
    return mode == "package"


def code_packages(stage: Path) -> list[str]:
    """The `c123` and `c123_pipeline` packages this process imports, laid out as installed packages under
    `stage` (also from a checkout, where c123_pipeline's subpackages live in other folders): Ray's py_modules."""
    import importlib

    import c123
    import c123_pipeline

    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(Path(c123.__file__).parent, stage / "c123", ignore=skip, dirs_exist_ok=True)
    shutil.copytree(Path(c123_pipeline.__file__).parent, stage / "c123_pipeline", ignore=skip, dirs_exist_ok=True)
    for sub in ("datasets", "tasks", "flows", "reports"):
        folder = Path(importlib.import_module(f"c123_pipeline.{sub}").__file__).parent
        shutil.copytree(folder, stage / "c123_pipeline" / sub, ignore=skip, dirs_exist_ok=True)
    return [str(stage / "c123"), str(stage / "c123_pipeline")]


def worker_runtime_env(local: bool, stage: Path) -> dict:
    """The job's runtime_env: worker_env(), plus the code as py_modules (staged in `stage`) when shipped."""
    ship = ships_code(local)
    env: dict = {"env_vars": worker_env(ship)}
    if ship:
        env["py_modules"] = code_packages(stage)
    return env


def ensure_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
               log_to_driver: bool | None = None) -> ClusterInfo:
    """Reuse the connected cluster, join `address`/RAY_ADDRESS, or start a private loopback cluster.

    log_to_driver (default: $C123_RAY_LOG_TO_DRIVER != '0') forwards the actors' output to this process.
    """
    global _STARTED_HERE
    quiet_env()
    import ray

    if log_to_driver is None:
        log_to_driver = os.environ.get("C123_RAY_LOG_TO_DRIVER", "1") != "0"
    started = False
    with _LOCK:
        if not ray.is_initialized():
            started = True
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            local = address == "local"
            loopback = local or address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
            if local:
                local_auth_env()
                from ray._raylet import Config
                Config.initialize("")  # Ray read RAY_AUTH_MODE when imported; make it see the mode set now
            if local:  # the cluster ends with this process, however it ends
                from c123_pipeline.tasks import lifeline
                lifeline.arm()
            with tempfile.TemporaryDirectory(prefix="c123-code-") as stage:  # py_modules: uploaded by ray.init
                # the workers' environment is taken here, before _loopback_init swaps HOME
                kwargs = dict(include_dashboard=False, logging_level="WARNING", log_to_driver=log_to_driver,
                              runtime_env=worker_runtime_env(local, Path(stage)))
                with _loopback_init(loopback, home=ray_home() if local else None), _keep_sigterm_handler():
                    if local:
                        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                                 _node_ip_address="127.0.0.1", **kwargs)
                    else:
                        ray.init(address=address, **kwargs)
            _STARTED_HERE = local
        res = ray.cluster_resources()
        return ClusterInfo(address=ray.get_runtime_context().gcs_address, started=started,
                           num_cpus=float(res.get("CPU", 0)), num_gpus=float(res.get("GPU", 0)))


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler with sys.exit; keep the caller's (e.g. c123's, which ends a
    run with its resume line) instead."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _loopback_init(loopback: bool, home: Path | None):
    """During ray.init: with `loopback`, Ray's get_node_ip_address() answers 127.0.0.1 (clusters "disabled":
    for this process via the constant, for the Ray processes via the variable they inherit), so neither a
    new cluster nor a join of 127.0.0.1:PORT is turned into the outward address; with `home`, the started
    Ray processes get it as HOME (ray_bootstrap_config.yaml there: no cloud-metadata probe). Restored after."""
    import ray._private.ray_constants as ray_constants

    saved_env = {k: os.environ.get(k) for k in ("HOME", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if home is not None:
        os.environ["HOME"] = str(home)
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def shutdown_ray() -> None:
    """Disconnect; a local cluster this process started stops too."""
    global _STARTED_HERE
    import ray

    with _LOCK:
        if ray.is_initialized():
            ray.shutdown()
            _STARTED_HERE = False


def started_here() -> bool:
    """Whether this process started the cluster it is connected to (and so owns its shutdown)."""
    return _STARTED_HERE


GPU_MEMORY_ENV = "C123_GPU_MEMORY_GB"
"""Memory of each GPU in GB, for clusters whose GPUs cannot be probed from the driver (and the tests)."""


def gpu_memory_bytes(timeout: float = 60.0) -> float | None:
    """Free memory of one of the cluster's GPUs in bytes: $C123_GPU_MEMORY_GB when set, else what
    torch.cuda.mem_get_info reports in a one-GPU task; None when that GPU has no CUDA (fake GPU resources) or
    no GPU becomes free in `timeout` seconds."""
    if os.environ.get(GPU_MEMORY_ENV):
        return float(os.environ[GPU_MEMORY_ENV]) * 1e9
    import ray

    def free_memory():
        import torch

        return float(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None

    ref = ray.remote(num_gpus=1, num_cpus=0)(free_memory).remote()
    try:
        return ray.get(ref, timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        return None
