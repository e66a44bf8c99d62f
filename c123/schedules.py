"""When to switch from the 3D prior to the dynamic prior, and how the two are weighted (METHOD.md 4-5).

Everything here is a small pure function or a tiny state machine over numbers, so the formulas can be
pinned by unit tests on hand-made sequences. Variants of the paper's ablations are data (`Variant`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from c123.config import ScheduleConfig
from c123.errors import C123Error


# ---- dynamic prior weight shapes (paper eq. 8 and 9): f(r) grows from 0 at the switch -------------
def exp_shape(r: float) -> float:
    """1 - e^-r (the paper's default)."""
    return 1.0 - math.exp(-r)


def linear_shape(r: float) -> float:
    """r."""
    return r


def log_shape(r: float) -> float:
    """log2(1 + r)."""
    return math.log2(1.0 + r)


SHAPES: dict[str, Callable[[float], float]] = {"exp": exp_shape, "linear": linear_shape, "log": log_shape}


def dynamic_weights(r: float, shape: Callable[[float], float], min_weight: float = 1e-5) -> tuple[float, float]:
    """(w3D, w2D) at progress r in [0, 1] after the switch: w2D = m + (1-m) f(r), w3D = 1 - (1-m) f(r)."""
    f = shape(min(max(r, 0.0), 1.0))
    return 1.0 - (1.0 - min_weight) * f, min_weight + (1.0 - min_weight) * f


def progress_after_switch(step: int, switch: int, total: int) -> float:
    """r = (step - switch) / (iterations left after the switch, NeRF and DMTet together)."""
    left = max(total - switch, 1)
    return (step - switch) / left


# ---- variants (the ablations of the paper and the code) ------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How a run decides its switch step and weights its priors afterwards."""

    name: str
    switch: str
    """'detector' (CLIP boundary detector), 'never', or 'step' (a fixed step, 0 for dynamic-only)."""
    after: str
    """'dynamic' (w3D decays, w2D grows) or '2d-only' (w3D = 0, w2D = 1)."""


VARIANTS: dict[str, Variant] = {
    "consistent123": Variant("consistent123", switch="detector", after="dynamic"),
    "3d-only": Variant("3d-only", switch="never", after="dynamic"),
    "dynamic-only": Variant("dynamic-only", switch="step", after="dynamic"),
    "fixed-switch": Variant("fixed-switch", switch="step", after="dynamic"),
    "3d-then-2d": Variant("3d-then-2d", switch="step", after="2d-only"),
}


def get_variant(name: str) -> Variant:
    """The variant called `name`; unknown names list the known ones."""
    if name not in VARIANTS:
        raise C123Error(f"unknown variant '{name}': use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def fixed_switch_step(cfg: ScheduleConfig) -> int | None:
    """The switch step a variant fixes in advance (None when the detector decides or it never switches)."""
    variant = get_variant(cfg.variant)
    if variant.switch != "step":
        return None
    return 0 if variant.name == "dynamic-only" else cfg.fixed_switch_step


def prior_weights(step: int, switch: int | None, total: int, cfg: ScheduleConfig) -> tuple[float, float]:
    """(w3D, w2D) at a global step (NeRF then DMTet), given the switch step or None before it happens."""
    if cfg.weight_shape not in SHAPES:
        raise C123Error(f"unknown weight shape '{cfg.weight_shape}': use one of {', '.join(SHAPES)}")
    if switch is None or step < switch:
        return 1.0, 0.0
    if get_variant(cfg.variant).after == "2d-only":
        return 0.0, 1.0
    r = progress_after_switch(step, switch, total)
    return dynamic_weights(r, SHAPES[cfg.weight_shape], cfg.min_weight)


# ---- CLIP boundary detector (section 4) -----------------------------------------------------------
def change_rates(scores: list[float]) -> list[float]:
    """r_k = (S^k - S^{k-1}) / S^{k-1} for consecutive scores."""
    return [(b - a) / a if a != 0 else math.inf for a, b in zip(scores, scores[1:])]


def rate_statistic(scores: list[float], window: int) -> float | None:
    """R^k = |mean of the last `window` rates|, or None until `window` rates exist."""
    rates = change_rates(scores)
    if len(rates) < window:
        return None
    return abs(sum(rates[-window:]) / window)


def is_check_step(step: int, cfg: ScheduleConfig) -> bool:
    """Checks run every `check_interval` steps inside [check_start, check_end]."""
    return cfg.check_start <= step <= cfg.check_end and (step - cfg.check_start) % cfg.check_interval == 0


@dataclass
class BoundaryDetector:
    """Accumulates S^k at check steps and says when structure has converged (or the switch is forced)."""

    cfg: ScheduleConfig
    iterations: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stats: list[float | None] = field(default_factory=list)
    switch_iteration: int | None = None
    forced: bool = False

    def update(self, step: int, score: float) -> bool:
        """Record S^k measured at `step`; True when the switch happens at this step."""
        if self.switch_iteration is not None:
            return False
        self.iterations.append(step)
        self.scores.append(float(score))
        stat = rate_statistic(self.scores, self.cfg.rate_window)
        self.stats.append(stat)
        if stat is not None and stat < self.cfg.threshold:
            self.switch_iteration = step
        elif step >= self.cfg.check_end:
            self.switch_iteration, self.forced = step, True
        return self.switch_iteration is not None

    def force(self, step: int) -> None:
        """Switch now (the window ended without a check landing on check_end)."""
        if self.switch_iteration is None:
            self.switch_iteration, self.forced = step, True

    def to_dict(self) -> dict:
        return {"iterations": self.iterations, "S": self.scores, "R": self.stats,
                "switch_iteration": self.switch_iteration, "forced": self.forced}

    @classmethod
    def from_dict(cls, cfg: ScheduleConfig, data: dict) -> "BoundaryDetector":
        return cls(cfg, list(data["iterations"]), list(data["S"]), list(data["R"]),
                   data["switch_iteration"], data["forced"])


def detect_switch(scores: list[float], cfg: ScheduleConfig) -> int | None:
    """The step at which a detector fed `scores` at consecutive check steps switches (for tests/analysis)."""
    detector = BoundaryDetector(cfg)
    step = cfg.check_start
    for score in scores:
        if detector.update(step, score):
            return detector.switch_iteration
        step += cfg.check_interval
    return None
