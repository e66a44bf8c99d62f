"""Result cache of a benchmark run: a finished case folder carries the key it was computed under.

key = sha256(input file bytes + prompt, resolved config hash, code version)[:16]. A rerun of the same run
folder recomputes a case only when its folder has no result.json, or the key it carries differs (the
input, the config or the code changed). Metrics are cached the same way, keyed by the case key and the
metric protocol.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from c123.config import ReconstructConfig
from c123.provenance import code_version as _code_version
from c123_pipeline.tasks import storage

KEY_FILE = "cache_key"
"""File in a case folder holding the key of the finished result.json beside it."""
METRICS_FILE = "metrics.json"
"""Cached metrics of a case folder (with the key and protocol they were computed under)."""


def code_version() -> str:
    """`git describe --always --dirty` of the checkout (as c123.provenance), else the package version."""
    return _code_version()


def input_files(case) -> list[Path]:
    """The files a case's input is read from (image, mask, depth), in a fixed order."""
    paths = [getattr(case, name, None) for name in ("rgba_path", "mask_path", "depth_path")]
    return [Path(p) for p in paths if p is not None]


def input_digest(case) -> str:
    """sha256 over the bytes of the case's input files (by role) and its prompt."""
    h = hashlib.sha256()
    for role in ("rgba_path", "mask_path", "depth_path"):
        path = getattr(case, role, None)
        h.update(role.encode() + b"\0")
        if path is not None:
            path = Path(path)
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            except OSError as err:  # the case will fail in the actor with a clear error; keep the key stable
                h.update(f"unreadable:{type(err).__name__}".encode())
        h.update(b"\0")
    h.update(str(getattr(case, "prompt", "")).encode())
    return h.hexdigest()


def cache_key(case, cfg: ReconstructConfig, version: str | None = None) -> str:
    """The key a finished reconstruction of `case` under `cfg` carries."""
    blob = "|".join([input_digest(case), cfg.hash(), version or code_version()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_key(case_dir: str | Path) -> str | None:
    """The key a case folder carries, or None."""
    try:
        return storage.read_text(storage.join(case_dir, KEY_FILE)).strip() or None
    except OSError:
        return None


def is_done(case_dir: str | Path, key: str) -> bool:
    """True when the folder holds a result.json computed under `key`."""
    return read_key(case_dir) == key and storage.is_file(storage.join(case_dir, "result.json"))


def mark_done(case_dir: str | Path, key: str) -> None:
    """Record that the result.json in `case_dir` was computed under `key` (after it was written; on object
    storage this marker commits the uploaded folder)."""
    storage.write(storage.join(case_dir, KEY_FILE), key + "\n")


def load_result(case_dir: str | Path) -> dict:
    """The case's result.json."""
    return json.loads(storage.read_text(storage.join(case_dir, "result.json")))


def metrics_key(case_key: str, protocol: dict) -> str:
    """Key of cached metrics: the case's result key plus the metric protocol."""
    blob = case_key + "|" + json.dumps(protocol, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_metrics(case_dir: str | Path, key: str) -> dict | None:
    """Cached metrics of a case folder when they were computed under `key`."""
    try:
        data = json.loads(storage.read_text(storage.join(case_dir, METRICS_FILE)))
    except (OSError, ValueError):
        return None
    return data if data.get("key") == key else None


def save_metrics(case_dir: str | Path, key: str, metrics: dict) -> None:
    """Cache metrics (NaN written as null) atomically."""
    storage.write(storage.join(case_dir, METRICS_FILE), json.dumps({"key": key, **_nan_to_none(metrics)}, indent=1))


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
