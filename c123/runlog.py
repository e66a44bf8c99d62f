"""TensorBoard events of one reconstruction, in OUT/tb/ (what researchers open with `tensorboard --logdir`).

The training loop hands `RunLog` a `StepLog` every log_every steps and at each stage's last step; from it the
log writes, against the global step (NeRF steps first, then DMTet steps):

    loss/<term>, loss/total        every weighted loss term of the step and their sum
    weights/w3D, weights/w2D        the prior weights
    detector/S, detector/R          S^k and R^k at the steps the detector scored
    detector/switch                 the switch step (once, when it is known)
    lr/<group>, grad_norm/<group>   learning rate and gradient L2 norm per parameter group, grad_norm/total
    validation/strip                a few orbit views of the current model (NeRF volume render or DMTet
                                    raster), every log.strip_every steps and at each stage's end

Everything is read from values the loop already has, at the log steps only, so logging adds no work to the
other steps and no random draws anywhere (a run with and without the log computes the same numbers).
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path

import numpy as np
import torch

from c123.cameras import orbit
from c123.config import ReconstructConfig
from c123.training import StepLog

EVENTS_DIR = "tb"
"""Folder of the events inside a reconstruction's output folder."""


class RunLog:
    """A SummaryWriter on OUT/tb/ that turns the loop's StepLogs into scalars and validation strips."""

    def __init__(self, out_dir: str | Path, cfg: ReconstructConfig, device, resumed_from: int | None = None):
        """Open OUT/tb/; a resumed run hides what an earlier attempt logged after `resumed_from` (purge_step)."""
        from torch.utils.tensorboard import SummaryWriter

        self.cfg = cfg
        self.dir = Path(out_dir) / EVENTS_DIR
        self.kept_until = resumed_from or 0
        """Steps up to here are in the events an earlier attempt wrote (those after it are purged)."""
        self.writer = SummaryWriter(str(self.dir), purge_step=None if resumed_from is None else resumed_from + 1)
        self._closed = weakref.finalize(self, self.writer.close)  # also on an exception or at exit
        self.scores_logged = 0
        self.switch_logged = False
        self.last_strip: dict[str, int] = {}
        c = cfg.camera
        self.strip_cams = orbit(cfg.log.strip_views, polar=c.ref_polar, radius=c.ref_radius, fovy=c.fovy,
                                start_azimuth=c.ref_azimuth).to(device)
        if resumed_from is None:
            from c123.config_files import to_yaml

            self.writer.add_text("config", "```yaml\n" + to_yaml(cfg) + "```", 0)

    def __call__(self, rec: StepLog) -> None:
        """Log one StepLog; flushed at once, so a killed run keeps what it logged."""
        w, step = self.writer, rec.step
        groups = rec.stage.optimizer.param_groups
        names = [str(g.get("name", i)) for i, g in enumerate(groups)]
        # one device-to-host copy for every number of this step
        terms = [v.detach().float().reshape(()) for v in rec.terms.values()]
        norms = [_grad_norm(g["params"]) for g in groups]
        values = torch.stack([*terms, *norms]).tolist() if terms or norms else []
        term_values, norm_values = values[:len(terms)], values[len(terms):]
        for name, value in zip(rec.terms, term_values):
            w.add_scalar(f"loss/{name}", value, step)
        if term_values:
            w.add_scalar("loss/total", sum(term_values), step)
        w.add_scalar("weights/w3D", rec.w3d, step)
        w.add_scalar("weights/w2D", rec.w2d, step)
        for name, group, norm in zip(names, groups, norm_values):
            w.add_scalar(f"lr/{name}", group["lr"], step)
            w.add_scalar(f"grad_norm/{name}", norm, step)
        if norm_values:
            w.add_scalar("grad_norm/total", math.hypot(*norm_values), step)
        self._detector(rec)
        if self._strip_due(rec):
            self._strip(rec)
        w.flush()

    def _detector(self, rec: StepLog) -> None:
        """S^k and R^k scored since the last call, at the steps they were scored; the switch once."""
        det = rec.detector
        for i in range(self.scores_logged, len(det.scores)):
            if det.iterations[i] <= self.kept_until:
                continue
            self.writer.add_scalar("detector/S", det.scores[i], det.iterations[i])
            if det.stats[i] is not None:
                self.writer.add_scalar("detector/R", det.stats[i], det.iterations[i])
        self.scores_logged = len(det.scores)
        if rec.switch is not None and not self.switch_logged:
            if rec.switch > self.kept_until:
                self.writer.add_scalar("detector/switch", rec.switch, rec.switch)
            self.switch_logged = True

    def _strip_due(self, rec: StepLog) -> bool:
        every = self.cfg.log.strip_every
        if rec.stage.preview is None or every <= 0:
            return False
        last = self.last_strip.get(rec.stage.name, max(rec.stage.first - 1, self.kept_until))
        return rec.step == rec.stage.last or rec.step // every > last // every

    def _strip(self, rec: StepLog) -> None:
        """The orbit views side by side, as one image."""
        size = self.cfg.log.strip_size
        with torch.no_grad():
            views = rec.stage.preview(self.strip_cams, size)
        strip = views.clamp(0, 1).permute(1, 0, 2, 3).reshape(size, -1, 3)  # [N,H,W,3] -> [H, N*W, 3]
        image = (strip.cpu().numpy() * 255 + 0.5).astype(np.uint8)
        self.writer.add_image("validation/strip", image, rec.step, dataformats="HWC")
        self.last_strip[rec.stage.name] = rec.step

    def close(self) -> None:
        """Flush and close the events file."""
        self._closed()


def _grad_norm(params: list[torch.Tensor]) -> torch.Tensor:
    """L2 norm of the gradients of `params` (0 when none has one), as a 0-d float tensor on their device."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=params[0].device if params else "cpu")
    norms = torch._foreach_norm(grads)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))


def open_runlog(out_dir: str | Path, cfg: ReconstructConfig, device, resumed_from: int | None) -> RunLog | None:
    """The run's RunLog, or None when `log.tensorboard` is off."""
    return RunLog(out_dir, cfg, device, resumed_from) if cfg.log.tensorboard else None
