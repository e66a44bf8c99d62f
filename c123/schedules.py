"""When to switch from the 3D prior to the dynamic prior, and how the two are weighted (paper 3.2-3.3).

Everything here is a small pure function or a tiny state machine over numbers, so the formulas can be
pinned by unit tests on hand-made sequences. Variants of the paper's ablations are data (`Variant`).

Steps are the official 1-based global steps (nerf/utils.py increments `global_step` before `train_step`):
the NeRF stage runs steps 1..nerf_iters, the DMTet stage nerf_iters+1..nerf_iters+dmtet_iters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from c123.config import ScheduleConfig
from c123.errors import C123Error


# ---- dynamic prior weight shapes (paper eq. 8 and 9): f(r) grows from 0 at the switch -------------
def exp_shape(r: float) -> float:
    """1 - e^-r (the paper's default; Trainer.adjust_loss_weights 'exponential')."""
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
    """'detector' (CLIP boundary detector), 'never', or a key of SWITCH_AT (a step known in advance)."""
    after: str
    """'dynamic' (w3D decays, w2D grows) or '2d-only' (w3D = 0, w2D = 1)."""

    @property
    def priors(self) -> tuple[str, ...]:
        """The prior slots (fields of `c123.priors.loading.Priors`) this variant uses: the 3D prior always,
        Stable Diffusion once it can switch, CLIP for the boundary detector."""
        return ("zero123",) + (("sd",) if self.switch != "never" else ()) + (("clip",) if self.switch == "detector"
                                                                               else ())


SWITCH_AT: dict[str, Callable[[ScheduleConfig, int], int]] = {
    "start": lambda cfg, nerf_iters: 0,                          # all_weight: dynamic from step 1
    "fixed": lambda cfg, nerf_iters: cfg.fixed_switch_step,      # --fix3D_iters
    "nerf_end": lambda cfg, nerf_iters: nerf_iters,              # -only3D_only2D: the stage boundary
}
"""Switch steps known in advance, by the variant's `switch` key (given the config and the NeRF iterations)."""

VARIANTS: dict[str, Variant] = {
    "consistent123": Variant("consistent123", switch="detector", after="dynamic"),
    "3d-only": Variant("3d-only", switch="never", after="dynamic"),
    "dynamic-only": Variant("dynamic-only", switch="start", after="dynamic"),
    "fixed-switch": Variant("fixed-switch", switch="fixed", after="dynamic"),
    "3d-then-2d": Variant("3d-then-2d", switch="nerf_end", after="2d-only"),
}


def get_variant(name: str) -> Variant:
    """The variant called `name`; unknown names list the known ones."""
    if name not in VARIANTS:
        raise C123Error(f"unknown variant '{name}': use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def planned_switch(cfg: ScheduleConfig, nerf_iters: int) -> int | None:
    """The switch step a variant fixes in advance (None when the detector decides or it never switches)."""
    variant = get_variant(cfg.variant)
    at = SWITCH_AT.get(variant.switch)
    return None if at is None else at(cfg, nerf_iters)


def prior_weights(step: int, switch: int | None, total: int, cfg: ScheduleConfig) -> tuple[float, float]:
    """(w3D, w2D) at a 1-based global step, given the switch step (None before it happens).

    Up to and including the switch step only the 3D prior acts (the official decides at a step whose loss
    is already 3D-only); after it the variant's `after` rule applies.
    """
    if cfg.weight_shape not in SHAPES:
        raise C123Error(f"unknown weight shape '{cfg.weight_shape}': use one of {', '.join(SHAPES)}")
    if switch is None or step <= switch:
        return 1.0, 0.0
    if get_variant(cfg.variant).after == "2d-only":
        return 0.0, 1.0
    r = progress_after_switch(step, switch, total)
    return dynamic_weights(r, SHAPES[cfg.weight_shape], cfg.min_weight)


# ---- CLIP boundary detector (paper 3.2) -----------------------------------------------------------
def change_rates(scores: list[float]) -> list[float]:
    """r_k = (S^k - S^{k-1}) / S^{k-1} for consecutive scores."""
    return [(b - a) / a if a != 0 else math.inf for a, b in zip(scores, scores[1:])]


def rate_statistic(scores: list[float], window: int) -> float | None:
    """R^k = |mean of the last `window` rates|, or None until `window` rates exist."""
    rates = change_rates(scores)
    if len(rates) < window:
        return None
    return abs(sum(rates[-window:]) / window)


def is_score_step(step: int, cfg: ScheduleConfig) -> bool:
    """S^k is measured at steps that are multiples of check_interval inside [check_start, check_end]."""
    return cfg.check_start <= step <= cfg.check_end and step % cfg.check_interval == 0


def may_decide(step: int, cfg: ScheduleConfig, reference_step: bool) -> bool:
    """The detector may switch at a score step past check_start + interval * window, never on a
    reference-view step (the official decides inside the novel-view branch of train_step)."""
    earliest = cfg.check_start + cfg.check_interval * cfg.rate_window   # Trainer.only3D_least_iters
    return not reference_step and is_score_step(step, cfg) and step > earliest


@dataclass
class BoundaryDetector:
    """The series of S^k and R^k measured at score steps, and the switch they led to."""

    cfg: ScheduleConfig
    iterations: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    stats: list[float | None] = field(default_factory=list)
    switch_iteration: int | None = None
    forced: bool = False

    def record(self, step: int, score: float) -> None:
        """Add S^k measured at `step` and the R^k it gives."""
        self.iterations.append(step)
        self.scores.append(float(score))
        self.stats.append(rate_statistic(self.scores, self.cfg.rate_window))

    def converged(self) -> bool:
        """The latest R^k is below the threshold."""
        return bool(self.stats) and self.stats[-1] is not None and self.stats[-1] < self.cfg.threshold

    def step(self, step: int, reference_step: bool, score: Callable[[], float]) -> int | None:
        """One training step of the detector: score, maybe decide, or force at check_end; the switch or None."""
        if self.switch_iteration is not None:
            return self.switch_iteration
        if is_score_step(step, self.cfg):
            self.record(step, score())
        if may_decide(step, self.cfg, reference_step) and self.converged():
            self.switch_iteration = step
        elif step >= self.cfg.check_end:
            # the official falls back to most_3Donly as the convergence step
            self.switch_iteration, self.forced = self.cfg.check_end, True
        return self.switch_iteration

    def to_dict(self) -> dict:
        return {"iterations": self.iterations, "S": self.scores, "R": self.stats,
                "switch_iteration": self.switch_iteration, "forced": self.forced}

    @classmethod
    def from_dict(cls, cfg: ScheduleConfig, data: dict) -> "BoundaryDetector":
        return cls(cfg, list(data["iterations"]), list(data["S"]), list(data["R"]),
                   data["switch_iteration"], data["forced"])


def detect_switch(scores: list[float], cfg: ScheduleConfig, ref_every: int = 0) -> int | None:
    """The step at which a detector fed `scores` at consecutive score steps switches (tests, analysis).

    ref_every: steps that are multiples of it are reference-view steps (no decision); 0: none are."""
    detector = BoundaryDetector(cfg)
    feed = iter(scores)
    for step in range(1, cfg.check_end + 1):
        reference = bool(ref_every) and step % ref_every == 0
        if is_score_step(step, cfg):
            score = next(feed, None)
            if score is None:
                return None
        else:
            score = None
        switch = detector.step(step, reference, lambda: score)
        if switch is not None:
            return switch
    return detector.switch_iteration
