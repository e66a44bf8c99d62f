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
