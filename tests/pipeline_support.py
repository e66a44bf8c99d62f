"""Shared set-up of the pipeline tests (tests/test_pipeline_*.py): isolated Prefect/Ray/model folders, one
Ray cluster per test process, small configs, and the work functions the fault tests inject into actors.

The session's isolated Prefect/Ray/model folders are set up by tests/session_env.py (through conftest.py).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import socket
from pathlib import Path

from data_support import DATA, needs_data  # noqa: F401  (re-exported: the pipeline tests import them from here)
from session_env import SESSION, TESTS  # noqa: F401  (the session's Prefect, Ray and model folders)

REPO = TESTS.parent

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
