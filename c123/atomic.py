"""Atomic file writes: a temp file in the same folder, then os.replace, so readers never see half a file.

`write_atomic` also takes an fsspec URL (s3://, gs://, memory://, ...): the bytes go to a temp name beside
the target in one put, then move to the target (on object stores each put is itself all-or-nothing, so a
reader sees the old object, the new one, or none; never a part)."""

from __future__ import annotations

import os
import posixpath
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def is_url(path: str | Path) -> bool:
    """True for an fsspec URL other than file:// (a plain path, a Path and file:// are local)."""
    return not isinstance(path, Path) and "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str | Path) -> Path:
    """A local path (file://... or a plain path) as a Path."""
    text = str(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


@contextmanager
def atomic_path(path: str | Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temp path beside `path` (same suffix, so writers can infer the format); replace on success.

    mode: permissions of the result (0o600 for a secret: the file is never readable by others, not even
    for a moment)."""
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # mkstemp makes 0600; results are meant to be read by others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes, mode: int = 0o644) -> Path | str:
    """Write text or bytes to `path` (a local path, or an fsspec URL: then the URL is returned) atomically."""
    data = data.encode() if isinstance(data, str) else data
    if is_url(path):
        return _write_url(str(path), data)
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)
    return local_path(path)


def _write_url(url: str, data: bytes) -> str:
    from fsspec.core import url_to_fs

    fs, target = url_to_fs(url)
    folder, name = posixpath.split(target)
    tmp = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    fs.pipe_file(tmp, data)
    try:
        fs.mv(tmp, target)
    except BaseException:
        fs.rm_file(tmp)
        raise
    return url
