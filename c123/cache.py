"""Folders of derived data (a preprocessed photo, a learned concept), keyed by what they were computed from.

They live under $C123_CACHE (default ~/.cache/c123), beside the synthetic renders. A folder appears whole or
not at all: it is written under a temporary name and renamed into place, so an interrupted write leaves
nothing a later run could mistake for a result, and two processes computing the same key keep one.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CACHE_ENV = "C123_CACHE"


def cache_root() -> Path:
    """$C123_CACHE, else ~/.cache/c123."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/c123").expanduser()


def digest(*parts: str | bytes) -> str:
    """A 16-hex-digit key over `parts` (each length-prefixed, so no two part lists collide)."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def file_digest(path: str | Path | None) -> str:
    """sha256 of a file's bytes ('-' for no file)."""
    if path is None:
        return "-"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_folder(kind: str, key: str, write: Callable[[Path], None]) -> tuple[Path, bool]:
    """(cache_root()/kind/key, True) when it exists; else `write(tmp)` fills a temporary folder that becomes
    it, and (folder, False)."""
    folder = cache_root() / kind / key
    if folder.is_dir():
        return folder, True
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{key}-"))
    try:
        write(tmp)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process finished the same key first: keep its folder
            if not folder.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, False
