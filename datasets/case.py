"""One benchmark case: where its files are and how to turn them into a reconstruction input."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from c123.errors import DatasetError
from c123.metrics import GsoTruth
from c123.preprocess import ReconstructionInput, load_input, prepare_input

CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]{0,99}")
"""A case id is a plain name: ASCII letters, digits, '_', '.', '+', '-', '@' (synthetic-elevated's `toy@30`),
starting with a letter or digit, at most 100 characters, no '..'. It becomes a folder name inside the run
folder, never a path."""


def check_case_id(case_id: str, where: str) -> str:
    """`case_id` when it is a plain name (CASE_ID), else a DatasetError naming `where` (file and line) and the rule."""
    if not CASE_ID.fullmatch(case_id) or ".." in case_id:
        raise DatasetError(f"{where}: case id {case_id!r} is not a plain name (letters, digits, '_', '.', '+', "
                           "'-', '@'; starting with a letter or digit; no '..', no '/'; at most 100 characters): "
                           "rename it in the table")
    return case_id


@dataclass
class Case:
    """An image (+ mask, depth), its prompt and category; `scene` names the ground truth of synthetic cases."""

    id: str
    rgba_path: Path
    depth_path: Path | None = None
    mask_path: Path | None = None
    prompt: str = ""
    category: str | None = None
    recenter: bool = False
    """True for raw photos; False for inputs already recentred (the authors' `_rgba.png`, synthetic renders)."""
    scene: str | None = None
    ref_elevation: float | str | None = None
    """Elevation (degrees) of the input view when the dataset's table gives it (GSO: 30; synthetic: the one it
    was rendered from; RealFusion15/C10 tables may give one, or 'estimate'); the flow passes it to the
    reconstruction as camera.ref_polar = 90 - elevation (or camera.estimate_elevation) unless its `elevation`
    parameter overrides every case's. None: the config's (elevation 0 in `paper`, the estimate in `fast` and
    `verify`)."""
    true_elevation: float | None = None
    """The elevation the input view was really taken from, where the layout knows it (synthetic renders, GSO):
    the oracle answers relative to it (prior.oracle_elevation) and the report compares it with the assumed
    one. None: unknown (a photo's table gives what to assume, not the truth)."""
    gso: GsoTruth | None = None
    """A GSO case's ground truth (mesh, 16 renders with depth, rotation) for SyncDreamer's protocol."""

    def load(self, cfg=None, size: int | None = None) -> ReconstructionInput:
        """The preprocessed reference view (resized to `size` when given). With the run's config, what the
        case lacks (a plain photo's cut-out, depth, prompt) is estimated by its preprocessing models, once
        per input (c123.preprocess.prepare_input caches it by the files' bytes)."""
        if cfg is None:
            return load_input(self.rgba_path, mask=self.mask_path, depth=self.depth_path, prompt=self.prompt,
                              case_id=self.id, size=size, recenter=self.recenter)
        return prepare_input(self.rgba_path, mask=self.mask_path, depth=self.depth_path, prompt=self.prompt, cfg=cfg,
                             case_id=self.id, recenter=self.recenter, size=size)
