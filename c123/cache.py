"""Folders of derived data (a preprocessed photo, a learned concept), keyed by what they were computed from.

They live under $C123_CACHE (default ~/.cache/c123), beside the synthetic renders. A folder appears whole or
not at all: it is written under a temporary name and renamed into place, so an interrupted write leaves
nothing a later run could mistake for a result, and two processes computing the same key keep one. A cached
folder that cannot be read back (a truncated record, a damaged or deleted file) is set aside as
`<key>.damaged` and computed again, with a notice, as damaged checkpoints are (c123.checkpoint).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

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
    if folder.exists():  # a file where the folder belongs: never a result
        set_aside(folder)
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


def cached_read(kind: str, key: str, write: Callable[[Path], None], read: Callable[[Path, bool], T],
                announce: Callable[[str], None]) -> T:
    """read(folder, cached) of cache_root()/kind/key, written by `write` when missing. A cached folder that
    `read` cannot read is set aside as `<key>.damaged` (announced) and written again; an error reading a
    folder just written is the computation's own and is raised."""
    folder, cached = cached_folder(kind, key, write)
    if not cached:
        return read(folder, False)
    try:
        return read(folder, True)
    except Exception as err:  # noqa: BLE001 - whatever a damaged cache file makes a reader raise, it is recomputed
        aside = set_aside(folder)
        announce(f"the cached {kind} folder {folder} cannot be read ({type(err).__name__}: "
                 f"{' '.join(str(err).split())[:200]}): set aside as {aside.name}; recomputing it")
    folder, _ = cached_folder(kind, key, write)
    return read(folder, False)


def set_aside(folder: Path) -> Path:
    """Rename a damaged cache folder to `<name>.damaged` (replacing an older one), so it is kept for a look but
    never read again."""
    aside = folder.with_name(folder.name + ".damaged")
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    elif aside.exists() or aside.is_symlink():
        aside.unlink()
    os.replace(folder, aside)
    return aside
