"""Names of what a run writes: the case id of an input image and output folders that never clobber a run."""

from __future__ import annotations

import time
from pathlib import Path

IMAGE_SUFFIX = "_rgba"
"""The authors' datasets name their inputs `<case>_rgba.png`; the suffix is not part of the case id."""


def case_name(image: str | Path) -> str:
    """The case id of an input image: its file stem without a trailing '_rgba' ('cactus_rgba.png' -> 'cactus')."""
    return plain_case_id(Path(image).stem)


def plain_case_id(case_id: str) -> str:
    """A case id without a trailing '_rgba' (what case ids of images named `<case>_rgba.*` were before)."""
    return case_id.removesuffix(IMAGE_SUFFIX) or case_id


def new_run_dir(parent: str | Path, now: float | None = None) -> Path:
    """Create and return parent/<YYYYmmdd-HHMMSS> (local time), with -2, -3, ... when that folder exists, so
    a rerun never writes into an earlier run's folder."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    for n in range(1, 10_000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()  # atomic: two runs started in the same second get different folders
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"{parent} already holds 9999 runs stamped {stamp}")


def check_output_folder(folder: str | Path, flag: str = "--out") -> None:
    """C123Error (one line naming the path and the fix) unless `folder` is, or can be made as, a writable
    folder: not an existing file, not under a file, not on a read-only disk or in a folder without write
    permission. Nothing is created here (a refused input then leaves no empty folder behind). URLs are
    left to the storage layer."""
    import os

    from c123.atomic import is_url
    from c123.errors import C123Error

    if is_url(folder):
        return
    path = Path(folder).expanduser()
    if path.exists() and not path.is_dir():
        raise C123Error(f"{flag} {folder} is a file, not a folder: pass a folder path (it is created when missing)")
    existing = path
    while not existing.exists() and existing != existing.parent:  # the nearest part of the path that exists
        existing = existing.parent
    if not existing.is_dir():
        raise C123Error(f"{flag} {folder}: {existing} is a file, so no folder can be made under it: pass a path "
                        "outside it")
    if not os.access(existing, os.W_OK | os.X_OK):
        why = "is on a read-only disk" if _read_only(existing) else "is not writable by you"
        raise C123Error(f"{flag} {folder}: {existing} {why}: pass a folder you can write to")


def _read_only(path: Path) -> bool:
    import os

    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
