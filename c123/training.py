"""The one training loop both stages run, and the run-state record a checkpoint restores.

A `Stage` says what is optimised over which global steps and how one step's loss is computed; `run_stage`
is the loop: detector, prior weights, loss terms, backward, optimiser, EMA at epoch ends, progress and
checkpoints. The switch policy itself lives in `c123.schedules`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from c123.cameras import Cameras
from c123.checkpoint import CheckpointIdentity, save_checkpoint
from c123.config import ReconstructConfig
from c123.ema import ParameterEMA
from c123.errors import C123Error, GeometryError
from c123.progress import ProgressFn, Step
from c123.schedules import BoundaryDetector, get_variant, planned_switch, prior_weights

LossTerms = dict[str, torch.Tensor]
"""Named, already weighted loss terms of one step; the step's loss is their sum."""


@dataclass
class RunState:
    """Where a reconstruction stands: everything a checkpoint restores besides the models."""

    stage: str = "nerf"
    """Stage of the last completed step."""
    step: int = 0
    """Last completed 1-based global step (NeRF steps first, then DMTet steps)."""
    switch: int | None = None
    """Global step after which the dynamic prior acts (None: not yet)."""
    detector: dict = field(default_factory=dict)
    """BoundaryDetector.to_dict()."""
    history: dict = field(default_factory=lambda: {"iterations": [], "w3d": [], "w2d": [], "loss": {}})
    """Prior weights every log interval, and each loss term as [step, value] pairs (result.json `weights`,
    `loss`): reference and novel steps have different terms."""
    seconds: dict = field(default_factory=lambda: {"nerf": 0.0, "dmtet": 0.0, "export": 0.0})
    """Seconds spent per stage (summed over resumed runs)."""
    rng: dict = field(default_factory=dict)
    """States of the run's generator and of torch's global generator."""

    @classmethod
    def start(cls, cfg: ReconstructConfig) -> RunState:
        state = cls(switch=planned_switch(cfg.schedule, cfg.train.nerf_iters))
        state.detector = BoundaryDetector(cfg.schedule).to_dict()
        return state

    def to_dict(self) -> dict:
        return {"stage": self.stage, "step": self.step, "switch": self.switch, "detector": self.detector,
                "history": self.history, "seconds": self.seconds, "rng": self.rng}

    @classmethod
    def from_dict(cls, data: dict) -> RunState:
        return cls(**data)

    def capture_rng(self, gen: torch.Generator) -> None:
        self.rng = {"generator": gen.get_state(), "device": gen.device.type, "torch": torch.get_rng_state()}

    def restore_rng(self, gen: torch.Generator) -> None:
        if self.rng:
            saved = self.rng.get("device", "cpu")
            if saved != gen.device.type:
                raise C123Error(f"the checkpoint's random state is of a {saved} generator and this run draws on "
                                f"{gen.device.type}: resume on a {saved} device, or delete checkpoints/ to restart")
            gen.set_state(self.rng["generator"])
            torch.set_rng_state(self.rng["torch"])


@dataclass
class Stage:
    """One stage of the method: what it optimises, over which global steps, and one step's loss."""

    name: str
    first: int
    """First 1-based global step of the stage."""
    last: int
    """Last 1-based global step of the stage."""
    module: nn.Module
    """Everything the stage optimises (saved in its checkpoint)."""
    optimizer: torch.optim.Optimizer
    loss_terms: Callable[[int, bool, float, float], LossTerms]
    """(step, reference_step, w3D, w2D) -> weighted loss terms."""
    before_step: Callable[[int], None] = lambda step: None
    """Per-step schedules applied before the loss (hash-grid level ramp, occupancy grid refresh)."""
    score: Callable[[], float] | None = None
    """S^k of the current field for the boundary detector (None: the detector cannot act in this stage)."""
    ema: ParameterEMA | None = None
    """Average of `module`'s parameters, updated at epoch ends (None: not kept)."""
    extras: dict = field(default_factory=dict)
    """More state a checkpoint keeps, by name: objects with state_dict / load_state_dict (occupancy grid)."""
    scaler: torch.amp.GradScaler | None = None
    """Loss scaling for fp16 priors on CUDA (the official GradScaler under -O); None: no scaling."""
    preview: Callable[[Cameras, int], torch.Tensor] | None = None
    """(cameras, size) -> [N,size,size,3] renders of the current model on white, no gradients, no random draws
    (the run log's validation strip); None: the stage has none."""

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "extras": {name: obj.state_dict() for name, obj in self.extras.items()},
                "scaler": None if self.scaler is None else self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        for name, obj in self.extras.items():
            obj.load_state_dict(state["extras"][name])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def backward_and_step(self, loss: torch.Tensor) -> None:
        """One optimiser step on `loss` (scaled when fp16 priors could underflow the gradients)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # unscales first, so Adan clips the true gradient norm
        self.scaler.update()


@dataclass
class StepLog:
    """What the loop hands `Loop.log` every log_every steps and at a stage's last step: values it holds anyway."""

    stage: Stage
    step: int
    w3d: float
    w2d: float
    terms: LossTerms
    detector: BoundaryDetector
    switch: int | None


@dataclass
class Loop:
    """What every stage's loop shares: the config, the run state and where checkpoints go."""

    cfg: ReconstructConfig
    state: RunState
    gen: torch.Generator
    ckpt_dir: Path
    identity: CheckpointIdentity
    progress: ProgressFn
    log: Callable[[StepLog], None] | None = None
    """The run log (c123.runlog.RunLog); None: nothing is logged besides result.json's history."""

    @property
    def total(self) -> int:
        return self.cfg.train.nerf_iters + self.cfg.train.dmtet_iters

    @property
    def log_every(self) -> int:
        return max(1, self.total // 200)


def run_stage(stage: Stage, loop: Loop) -> None:
    """Train `stage` from the step after `loop.state.step` to `stage.last`, checkpointing as it goes.

    A step never waits for the device: the loss terms of each log step are copied to the host in the background
    and read (into the history, the progress line and a finiteness check) at the next log step or checkpoint."""
    cfg, state = loop.cfg, loop.state
    detector = BoundaryDetector.from_dict(cfg.schedule, state.detector)
    uses_detector = get_variant(cfg.schedule.variant).switch == "detector"
    every = cfg.train.checkpoint_every
    pending: LoggedStep | None = None
    tic = time.perf_counter()
    for step in range(max(state.step + 1, stage.first), stage.last + 1):
        reference = step % cfg.train.ref_every == 0
        stage.before_step(step)
        if uses_detector and state.switch is None:
            state.switch = decide_switch(detector, step, reference, stage.score)
        w3d, w2d = prior_weights(step, state.switch, loop.total, cfg.schedule)
        terms = stage.loss_terms(step, reference, w3d, w2d)
        loss = sum(terms.values())
        stage.backward_and_step(loss)
        if stage.ema is not None and (step % cfg.train.ema_every == 0 or step == stage.last):
            stage.ema.update(stage.module)  # at each epoch end; a last, partial epoch counts as one

        state.stage, state.step, state.detector = stage.name, step, detector.to_dict()
        logged = logged_step = None
        if step % loop.log_every == 0 or step == stage.last:
            if pending is not None:
                logged, logged_step = pending.finish(state.history), pending.step
            pending = LoggedStep.start(step, w3d, w2d, terms)
            if loop.log is not None:  # TensorBoard: one host read per log step (gradient norms need this step)
                loop.log(StepLog(stage, step, w3d, w2d, terms, detector, state.switch))
        loop.progress(Step(stage.name, step, loop.total, w3d, w2d, detector.scores[-1] if detector.scores else None,
                           state.switch, logged, logged_step))  # the previous log step's loss: no waiting
        if step == stage.last or (every and step % every == 0):
            if pending is not None:  # the history a checkpoint keeps is complete
                pending.finish(state.history)
                pending = None
            state.seconds[stage.name] += time.perf_counter() - tic
            tic = time.perf_counter()
            write_checkpoint(stage, loop)
    state.seconds[stage.name] += time.perf_counter() - tic


@dataclass
class LoggedStep:
    """A log step's prior weights and loss terms, on their way to the host without the step waiting for them."""

    step: int
    w3d: float
    w2d: float
    names: list[str]
    values: torch.Tensor
    """The terms' values [n] on the host (filled by an asynchronous copy from a CUDA device)."""
    copied: object | None
    """The CUDA event after the copy (None: the values were on the host already)."""

    @classmethod
    def start(cls, step: int, w3d: float, w2d: float, terms: LossTerms) -> LoggedStep:
        values = torch.stack([v.detach().float().reshape(()) for v in terms.values()]) if terms else torch.zeros(0)
        copied = None
        if values.is_cuda:
            values = values.to("cpu", non_blocking=True)  # into pinned memory, behind the step's kernels
            copied = torch.cuda.Event()
            copied.record()
        return cls(step, w3d, w2d, list(terms), values, copied)

    def finish(self, history: dict) -> float:
        """Append to the history and return the loss (their sum); GeometryError when it is not finite."""
        if self.copied is not None:
            self.copied.synchronize()  # long done by the next log step
        values = dict(zip(self.names, self.values.tolist()))
        record(history, self.step, self.w3d, self.w2d, values)
        loss = sum(values.values())
        if not math.isfinite(loss):
            named = ", ".join(f"{k}={v:.3g}" for k, v in values.items())
            raise GeometryError(f"the loss is not finite at step {self.step} ({named}): the field diverged; lower "
                                "the learning rate or check the inputs")
        return loss


def decide_switch(detector: BoundaryDetector, step: int, reference: bool,
                  score: Callable[[], float] | None) -> int | None:
    """The detector's step; a stage without a field to score (DMTet) forces the switch at once."""
    if score is None:
        detector.switch_iteration, detector.forced = step - 1, True
        return detector.switch_iteration
    return detector.step(step, reference, score)


def record(history: dict, step: int, w3d: float, w2d: float, values: dict[str, float]) -> None:
    """Append the step's weights and loss term values to the history series."""
    history["iterations"].append(step)
    history["w3d"].append(w3d)
    history["w2d"].append(w2d)
    for name, value in values.items():
        history["loss"].setdefault(name, []).append([step, value])


def write_checkpoint(stage: Stage, loop: Loop) -> None:
    """checkpoints/<stage>.pt: the identity, the run state with the RNG, and the stage's state."""
    loop.state.capture_rng(loop.gen)
    save_checkpoint(loop.ckpt_dir / f"{stage.name}.pt", loop.identity,
                    {"state": loop.state.to_dict(), "stage": stage.state_dict()})


def make_scaler(cfg: ReconstructConfig, device) -> torch.amp.GradScaler | None:
    """A GradScaler when the priors run in fp16 (CUDA with prior.precision 'fp16'), else None."""
    if cfg.prior.precision == "fp16" and torch.device(device).type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def make_optimizer(groups: list[dict], cfg: ReconstructConfig) -> torch.optim.Optimizer:
    """Adan as main.py builds it (eps 1e-8, weight decay 2e-5 as a proximal step, global-norm clip 5), or
    Adam as the paper states (betas (0.9, 0.99), eps 1e-15)."""
    t = cfg.train
    if t.optimizer == "adan":
        from pytorch_optimizer import Adan
        return Adan(groups, lr=t.lr, betas=(0.98, 0.92, 0.99), eps=t.adan_eps, weight_decay=t.weight_decay,
                    weight_decouple=False, max_grad_norm=t.max_grad_norm)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, betas=(0.9, 0.99), eps=1e-15)
    raise C123Error(f"unknown optimizer '{t.optimizer}': use train.optimizer=adan or adam")
