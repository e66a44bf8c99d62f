"""Dataset names -> folders -> `Dataset`; the data root comes from C123_DATA."""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from c123.errors import DatasetError
from c123_pipeline.datasets import layouts
from c123_pipeline.datasets.case import Case

DATA_ENV = "C123_DATA"
NAMED = {"realfusion15": "realfusion15", "c10": "c10", "realfusion15-original": "realfusion15/original", "gso": "gso"}
"""Named datasets and their folder under the data root."""
GENERATED = ("synthetic", "synthetic-elevated")
"""Datasets rendered on first use (c123.synthetic scenes; synthetic-elevated: at elevations 0, 15, 30)."""
EXPECTED = {"realfusion15": "<case>_rgba.png, <case>_depth.png and prompts.tsv",
            "c10": "<case>_rgba.png, <case>_depth.png and prompts.tsv",
            "realfusion15-original": "<folder>/image.png and mask.png",
            "gso": "gso_cases.tsv (case, elevation, rotation, prompt), <case>/model.obj, <case>/gt/NNN.png and NNN-depth.png"}


@dataclass
class Dataset:
    """A named list of cases and the folder they came from (None for generated ones)."""

    name: str
    cases: list[Case] = field(default_factory=list)
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.cases)


def default_data_root() -> Path:
    """$C123_DATA, else the shared checkout's `../shared/datasets` beside the repo, else ~/.cache/c123/data."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    return shared if shared.is_dir() else Path("~/.cache/c123/data").expanduser()


def load_dataset(name_or_path: str | Path, data_root: str | Path | None = None) -> Dataset:
    """`realfusion15`, `c10`, `realfusion15-original`, `synthetic`, `synthetic-elevated`, or the path of a dataset
    folder."""
    name = str(name_or_path)
    if name == "synthetic":
        return Dataset("synthetic", layouts.read_synthetic(), None)
    if name == "synthetic-elevated":
        return Dataset(name, layouts.read_synthetic(elevations=layouts.SYNTHETIC_ELEVATIONS), None)
    if name in NAMED:
        base = Path(data_root).expanduser() if data_root is not None else default_data_root()
        root = base / NAMED[name]
        if not root.is_dir():
            fetch_name = name.split("-")[0]
            raise DatasetError(
                f"dataset '{name}' not found: expected {EXPECTED[name]} in {root}; download it with "
                f"`c123 fetch {fetch_name} --root DIR` and set {DATA_ENV}=DIR")
    else:
        root = Path(name).expanduser()
        if not root.is_dir():
            raise DatasetError(f"unknown dataset '{name}': use one of {', '.join([*NAMED, *GENERATED])} "
                               "or the path of a dataset folder")
        name = root.name
    cases = layouts.detect(root)
    if not cases:
        raise DatasetError(f"{root} holds no cases: check its prompts table and images")
    return Dataset(name, cases, root)


def case_patterns(cases: str | list[str] | None) -> list[str] | None:
    """Case ids / wildcards from a comma-separated string or a list (items may hold commas too); None means
    every case. Given but naming nothing (`--cases ""`) is a DatasetError, not "every case"."""
    if cases is None:
        return None
    items = [cases] if isinstance(cases, str) else list(cases)
    patterns = [p.strip() for item in items for p in str(item).split(",") if p.strip()]
    if not patterns:
        raise DatasetError("--cases (the `cases` parameter) names no case: pass case ids or wildcards, e.g. "
                           "--cases 07 12, or leave it out to run every case")
    return patterns


def filter_cases(dataset: Dataset, cases: str | list[str] | None) -> Dataset:
    """The cases whose id matches any of `cases` (see case_patterns; shell wildcards); None: all of them."""
    patterns = case_patterns(cases)
    if patterns is None:
        return dataset
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.id, p) for c in dataset.cases)]
    if unmatched:
        raise DatasetError(f"no case of '{dataset.name}' matches {', '.join(unmatched)}: its cases are "
                           f"{', '.join(c.id for c in dataset.cases)}")
    cases = [c for c in dataset.cases if any(fnmatch.fnmatchcase(c.id, p) for p in patterns)]
    return Dataset(dataset.name, cases, dataset.root)
