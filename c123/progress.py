"""What a reconstruction reports while it runs: typed events for the CLI's bar, the benchmark's actors and tests.

Every event has `label` (what a status line shows in its stage column), `step` and `total`; a `Notice` only
carries a line to print and no progress.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union


@dataclass(frozen=True)
class Notice:
    """A line worth showing the user (a checkpoint that could not be reused, the concept token being learned)."""

    message: str


@dataclass(frozen=True)
class Resumed:
    """The run continues from a checkpoint after `step`."""

    step: int
    total: int
    label = "resume"


@dataclass(frozen=True)
class Step:
    """A training step of stage `label` ('nerf' or 'dmtet') has been taken."""

    label: str
    step: int
    total: int
    w3d: float
    w2d: float
    S: float | None
    """The detector's last score, None before its first."""
    switch: int | None
    loss: float | None
    """The loss of the previous log step (read without waiting), or None."""
    loss_step: int | None


@dataclass(frozen=True)
class Done:
    """The export has written result.json."""

    step: int
    total: int
    w3d: float | None
    w2d: float | None
    S: float | None
    switch: int | None
    label = "done"


Event = Union[Notice, Resumed, Step, Done]
ProgressFn = Callable[[Event], None]
