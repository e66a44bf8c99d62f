"""Exponential moving average of a module's parameters, as the authors' Trainer keeps it (torch_ema).

Only floating-point *parameters* are averaged: buffers and constant integer data (tet indices, hash-grid
level offsets) are never touched, so applying the average cannot corrupt them. The official updates the
average once per epoch (100 iterations) with decay min(decay, (1 + n) / (10 + n)), n = updates so far.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay(decay: float, num_updates: int) -> float:
    """torch_ema's warm-up: the decay used for the `num_updates`-th update (1-based)."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class ParameterEMA:
    """Shadow copies of `module`'s floating-point parameters (in `module.parameters()` order)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().clone() for p in _float_parameters(module)]

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """shadow -= (1 - d) (shadow - param), with d = ema_decay(decay, n)."""
        self.num_updates += 1
        keep = ema_decay(self.decay, self.num_updates)
        for shadow, param in zip(self.shadow, _float_parameters(module), strict=True):
            shadow.sub_((1.0 - keep) * (shadow - param))

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Write the averaged parameters into `module` (its buffers stay as they are)."""
        for shadow, param in zip(self.shadow, _float_parameters(module), strict=True):
            param.copy_(shadow)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": list(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(state['shadow'])} tensors, the module {len(self.shadow)}")
        self.decay, self.num_updates = float(state["decay"]), int(state["num_updates"])
        for shadow, saved in zip(self.shadow, state["shadow"]):
            shadow.copy_(saved)


def _float_parameters(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.is_floating_point() and p.requires_grad]
