"""One benchmark case: where its files are and how to turn them into a reconstruction input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from c123.preprocess import ReconstructionInput, load_input


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

    def load(self, size: int | None = None) -> ReconstructionInput:
        """The preprocessed reference view (resized to `size` when given)."""
        return load_input(self.rgba_path, mask=self.mask_path, depth=self.depth_path, prompt=self.prompt,
                          case_id=self.id, size=size, recenter=self.recenter)
