"""The Instant-NGP style NeRF field of the structure stage: hash grid -> MLP -> density and albedo.

As the authors' nerf/network_grid.py: a smoothstep hash grid (finest resolution 2048 * bound) feeds a 3-layer,
64-wide MLP (`sigma_net`) with 4 outputs; density = trunc_exp(raw + blob(x)) with the Gaussian blob
blob_density * exp(-|x|^2 / (2 blob_radius^2)) (renderer.py `density_blob` for the exp activation), so the field
starts as a soft ball at the origin that the MLP can still carve away; albedo = sigmoid. Normals are
`finite_difference_normal`: minus the central difference of the density with step 1e-2 (probe points clamped to
the bound), normalised, NaNs zeroed. They are first-order in the parameters: no double backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from c123.compiling import hot
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
    """exp(x) with the gradient truncated at x = 15 (activation.py `trunc_exp`)."""
    return _TruncExp.apply(x)


class NeRFField(nn.Module):
    """Density and albedo field over [-bound, bound]^3."""

    def __init__(self, cfg: NerfConfig):
        super().__init__()
        self.cfg, self.bound = cfg, cfg.bound
        self.encoder = HashGrid(cfg.num_levels, cfg.level_dim, cfg.log2_hashmap_size, cfg.base_resolution,
                                cfg.finest_resolution, cfg.bound, cfg.backend, cfg.interpolation)
        dims = [self.encoder.output_dim] + [cfg.hidden_dim] * (cfg.num_layers - 1) + [4]
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(dims) - 2 else [])
        self.mlp = nn.Sequential(*layers)

    def set_level_ratio(self, ratio: float) -> None:
        """Compute only the first ceil(ratio * num_levels) hash levels (the coarse-to-fine ramp; 1 = all)."""
        self.encoder.max_level = ratio

    def blob(self, x: torch.Tensor) -> torch.Tensor:
        """The Gaussian density prior (pre-activation) at points x[N,3]."""
        return self.cfg.blob_density * torch.exp(-(x * x).sum(-1) / (2 * self.cfg.blob_radius ** 2))

    @hot
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sigma[N] >= 0, albedo[N,3] in [0,1]) at points x[N,3]."""
        h = self.mlp(self.encoder(x))
        return trunc_exp(h[:, 0] + self.blob(x)), torch.sigmoid(h[:, 1:])

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """sigma[N] at points x[N,3]."""
        return self(x)[0]

    @hot
    def forward_with_normal(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma, albedo, normal[N,3]) from one batched evaluation of x and its 6 finite-difference probes.

        The normal keeps its graph (first order in the parameters) when grad is enabled.
        """
        eps, n = self.cfg.normal_eps, x.shape[0]
        steps = torch.cat([torch.eye(3, dtype=x.dtype, device=x.device), -torch.eye(3, dtype=x.dtype, device=x.device)])
        probes = (x[None] + eps * steps[:, None]).clamp(-self.bound, self.bound)         # [6,N,3]: +x+y+z-x-y-z
        sigma, albedo = self(torch.cat([x, probes.reshape(-1, 3)]))
        plus, minus = sigma[n:].reshape(2, 3, n)
        grad = ((plus - minus) * (0.5 / eps)).T
        # F.normalize's eps of 1e-10 is safe_normalize's clamp of |g|^2 at 1e-20
        normal = torch.nan_to_num(F.normalize(-grad, dim=-1, eps=1e-10))
        return sigma[:n], albedo[:n], normal

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """Unit normals [N,3] = -grad(sigma) / |grad(sigma)| at points x[N,3], by central differences."""
        return self.forward_with_normal(x)[2]

    def grid_parameters(self) -> list[nn.Parameter]:
        """Hash-table parameters (trained with the larger learning rate)."""
        return list(self.encoder.parameters())

    def other_parameters(self) -> list[nn.Parameter]:
        """MLP parameters."""
        return list(self.mlp.parameters())
