"""The run folder: one run at a time (a lock), every path written kept inside it, and its run.json."""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
from datetime import datetime, timezone
from pathlib import Path

from c123.atomic import is_url
from c123.errors import C123Error
from c123.outputs import check_output_folder
from c123_pipeline.tasks import storage

LOCK_FILE = ".lock"
"""Holds the pid of the run using the folder; locked (flock) while it runs, released when its process ends,
however it ends."""


class RunFolderBusy(C123Error):
    """Another run is using the run folder."""


class RunLock:
    """An exclusive lock on a run folder for the life of a run (a second run on the same folder is refused).

    Object storage has no lock: a run folder URL is not locked (docs/CLUSTER.md: one run per URL)."""

    def __init__(self, run_dir: storage.Location):
        self.remote = is_url(run_dir)
        self.path = None if self.remote else Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        if self.remote:
            return self
        check_output_folder(self.path.parent)  # an existing file, a path under one, a read-only disk: one line
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderBusy(f"{self.path.parent} is in use by another run ({holder}): wait for it to end or "
                                "pass another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, since {datetime.now(timezone.utc).isoformat(timespec='seconds')}".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def inside(run_dir: storage.Location, relative: str | Path) -> storage.Location:
    """run_dir / relative, refused (C123Error) unless it resolves inside the run folder."""
    if is_url(run_dir):
        norm = posixpath.normpath(str(relative))
        if norm in (".", "..") or norm.startswith(("../", "/")):
            raise C123Error(f"path '{relative}' leaves the run folder {run_dir}: case ids and variant names must "
                            "be plain names")
        return storage.join(run_dir, norm)
    root = Path(run_dir).resolve()
    path = (root / relative).resolve()
    if path == root or not path.is_relative_to(root):
        raise C123Error(f"path '{relative}' leaves the run folder {root}: case ids and variant names must be "
                        "plain names")
    return path


def read_run_json(run_dir: storage.Location, warn=None) -> dict:
    """RUN/run.json, {} when absent or unreadable (a rerun rebuilds it; `warn` hears about a damaged one)."""
    path = storage.join(run_dir, "run.json")
    try:
        return storage.read_json_object(path)
    except (OSError, ValueError) as err:
        if warn is not None:
            warn(f"{path} cannot be read ({type(err).__name__}): rebuilding it")
        return {}


def check_run_json(run_dir: storage.Location, dataset: str, preset: str) -> None:
    """A run folder holds runs of one dataset and preset: another is refused (before anything is written), as is
    a local path that cannot become a folder (an existing file, a path under one, a read-only disk)."""
    check_output_folder(run_dir)
    old = read_run_json(run_dir)
    for key, value in (("dataset", dataset), ("preset", preset)):
        if old.get(key) not in (None, value):
            raise C123Error(f"{run_dir} holds a run of {key} '{old[key]}', not '{value}': pass another --out folder")


def prepare_run_json(run_dir: storage.Location, info: dict, warn=None) -> dict:
    """Create RUN/run.json, or update it on a rerun (same dataset and preset; run id and created_at kept)."""
    path = storage.join(run_dir, "run.json")
    if storage.is_file(path):
        check_run_json(run_dir, info["dataset"], info["preset"])
        old = read_run_json(run_dir, warn)
        info["run_id"] = old.get("run_id") or info["run_id"]
        info["created_at"] = old.get("created_at") or info["created_at"]
        info["updated_at"] = datetime.now(timezone.utc).isoformat()
    storage.write(path, json.dumps(info, indent=2, default=str) + "\n")
    return info
