"""The Instant-NGP style NeRF field of the structure stage: hash grid -> MLP -> density and albedo.

As in stable-dreamfusion, density = exp(raw + blob(x)) with the Gaussian blob
blob_density * exp(-|x|^2 / (2 blob_radius^2)) added before the exp activation, so the field starts as a
soft ball at the origin that the MLP can still carve away. Normals are minus the normalised density gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from c123.config import NerfConfig
from c123.hashgrid import HashGrid


class _TruncExp(torch.autograd.Function):
    """exp whose gradient is clamped at exp(15), so one huge density cannot blow up the update."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """exp(x) with the gradient truncated at x = 15 (twice differentiable, for normal losses)."""
    return _TruncExp.apply(x)


class NeRFField(nn.Module):
    """Density and albedo field over [-bound, bound]^3."""

    def __init__(self, cfg: NerfConfig):
        super().__init__()
        self.cfg, self.bound = cfg, cfg.bound
        self.encoder = HashGrid(cfg.num_levels, cfg.level_dim, cfg.log2_hashmap_size, cfg.base_resolution,
                                cfg.finest_resolution, cfg.bound, cfg.backend)
        dims = [self.encoder.output_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [4]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
        self.mlp = nn.Sequential(*layers)

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian density prior (pre-activation) at points x[N,3]."""
        return self.cfg.blob_density * torch.exp(-(x * x).sum(-1) / (2 * self.cfg.blob_radius ** 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma[N] >= 0, albedo[N,3] in [0,1]) at points x[N,3]."""
        h = self.mlp(self.encoder(x))
        return trunc_exp(h[:, 0] + self.blob(x)), torch.sigmoid(h[:, 1:])

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma[N] at points x[N,3]."""
        return self(x)[0]

    def forward_with_normal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma, albedo, normal[N,3]) from one evaluation; the normal keeps its graph when grad is enabled."""
        training = torch.is_grad_enabled()
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            sigma, albedo = self(x)
            (grad,) = torch.autograd.grad(sigma.sum(), x, create_graph=training)
        normal = -F.normalize(grad, dim=-1, eps=1e-12)
        if not training:
            sigma, albedo, normal = sigma.detach(), albedo.detach(), normal.detach()
        return sigma, albedo, normal

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Unit normals [N,3] = -grad(sigma) / |grad(sigma)| at points x[N,3]."""
        return self.forward_with_normal(x)[2]

    def grid_parameters(self) -> list[nn.Parameter]:
        """Hash-table parameters (trained with the larger learning rate)."""
        return list(self.encoder.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        """MLP parameters."""
        return list(self.mlp.parameters())
