"""The shared datasets in tests: where they are, and a skip naming `c123 fetch` where a test needs one that is
absent (a newcomer's clone has none). Tests that need only *an* image use `synthetic_input` instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from c123_pipeline.datasets.registry import default_data_root

DATA = default_data_root()
"""$C123_DATA (tests/session_env.py pins it), else the shared datasets beside the checkout."""


def needs_dataset(*names: str, files: tuple[str, ...] = ()) -> pytest.MarkDecorator:
    """Skip unless DATA holds every dataset folder in `names` (and the `files` under DATA), with the command
    that downloads the first one missing."""
    missing = [n for n in names if not (DATA / n).is_dir()] + [f for f in files if not (DATA / f).is_file()]
    fetch = (missing[0] if missing else names[0]).split("/")[0]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not under {DATA}: download it with "
                                                    f"`c123 fetch {fetch} --root DIR` and set C123_DATA=DIR")


needs_data = needs_dataset("c10", "realfusion15")
"""Both benchmark datasets (the pipeline's runs over them)."""


@dataclass(frozen=True)
class SyntheticInput:
    """A rendered input image as `c123 reconstruct` takes it: RGBA PNG, 16-bit depth PNG, prompt; case id
    `scene` (the file is <scene>_rgba.png)."""

    rgba: Path
    depth: Path
    prompt: str
    scene: str


def synthetic_input(folder: Path, scene: str = "toy", size: int = 128) -> SyntheticInput:
    """Render c123.synthetic's `scene` from the reference camera into `folder` (datasets/layouts.py's own
    reference render, smaller: a few seconds on CPU)."""
    from c123_pipeline.datasets.layouts import SYNTHETIC_PROMPTS, render_reference

    rgba, depth = Path(folder) / f"{scene}_rgba.png", Path(folder) / f"{scene}_depth.png"
    if not (rgba.is_file() and depth.is_file()):
        Path(folder).mkdir(parents=True, exist_ok=True)
        render_reference(scene, size, rgba, depth)
    return SyntheticInput(rgba, depth, SYNTHETIC_PROMPTS.get(scene, f"a synthetic {scene} object"), scene)
