"""Shared set-up of the pipeline tests (tests/test_pipeline_*.py): isolated Prefect/Ray/model folders, one
Ray cluster per test process, small configs, and the work functions the fault tests inject into actors.

Import this module before anything imports Prefect: it points PREFECT_HOME at a per-session folder.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

SESSION = Path(tempfile.mkdtemp(prefix="c123-pipeline-tests-"))
TESTS = Path(__file__).resolve().parent
os.environ.pop("PREFECT_API_URL", None)  # a user's server must not receive test runs
# the Ray workers (and served flow runs) import the work functions of pipeline_faults from tests/
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
os.environ.update(
    PREFECT_HOME=str(SESSION / "prefect"),
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL=os.environ.get("PREFECT_LOGGING_LEVEL", "WARNING"),
    C123_TINY_MODELS=str(SESSION / "tiny-models"),
    C123_CACHE=str(SESSION / "cache"),  # preprocessed photos, learned concepts, synthetic renders
    C123_RAY_HOME=str(SESSION / "ray-home"),
    C123_RAY_LOG_TO_DRIVER="0",
    HF_HUB_OFFLINE="1",
)
atexit.register(shutil.rmtree, SESSION, True)

REPO = TESTS.parent
DATA = Path(os.environ.get("C123_DATA") or REPO.parent / "shared" / "datasets")
needs_data = pytest.mark.skipif(not (DATA / "c10").is_dir() or not (DATA / "realfusion15").is_dir(),
                                reason=f"shared datasets not found under {DATA} (set C123_DATA)")

FAST = ["train.nerf_iters=8", "train.dmtet_iters=4", "schedule.check_start=2", "schedule.check_end=6",
        "schedule.check_interval=2", "schedule.fixed_switch_step=4", "train.checkpoint_every=4",
        "train.eval_views=4", "train.video_frames=4", "train.eval_size=32", "train.texture_size=64"]
"""The tiny preset cut to a dozen iterations: every stage and output runs, in seconds per case on CPU."""


@functools.cache
def ray_cluster():
    """One local Ray cluster (2 CPUs) for the whole test process; the flows join it instead of starting one."""
    from c123_pipeline.tasks.ray_cluster import ensure_ray, shutdown_ray

    info = ensure_ray(num_cpus=2)
    atexit.register(shutdown_ray)
    return info


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_get(url: str):
    """GET a JSON answer from a Prefect API (None when it does not answer)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def copy_dataset(name: str, dest: Path) -> Path:
    """A private copy of a shared dataset folder (only the top-level files the loader reads)."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in (DATA / name).iterdir():
        if f.is_file() and (f.name == "prompts.tsv" or f.name.endswith(("_rgba.png", "_depth.png"))):
            shutil.copy2(f, dest / f.name)
    return dest
