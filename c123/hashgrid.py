"""Multiresolution hash encoding (Instant-NGP): a vectorised PyTorch version and a tiny-cuda-nn wrapper.

Level l has resolution floor(base * b^l) cells per side, with b chosen so the last level reaches the finest
resolution. A level whose (resolution + 1)^3 vertices fit in the table is indexed densely; larger levels use
the spatial hash (x * 1) ^ (y * 2654435761) ^ (z * 805459861) mod table size. Features of the 8 cell corners
are blended trilinearly, so the encoding is differentiable w.r.t. both the table and the input points.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from c123.errors import C123Error

PRIMES = (1, 2654435761, 805459861)


def _tcnn():
    try:
        import tinycudann
    except ImportError:  # optional GPU extra; the torch backend covers every other case
        return None
    return tinycudann


class HashGrid(nn.Module):
    """Encodes points x[N,3] in [-bound, bound]^3 into features [N, num_levels * level_dim]."""

    def __init__(self, num_levels: int = 16, level_dim: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, finest_resolution: int = 2048, bound: float = 1.0,
                 backend: str = "auto"):
        super().__init__()
        if backend not in ("auto", "torch", "tcnn"):
            raise C123Error(f"unknown hash-grid backend '{backend}': use 'auto', 'torch' or 'tcnn'")
        if backend == "tcnn" and _tcnn() is None:
            raise C123Error("hash-grid backend 'tcnn' needs tinycudann: pip install the gpu extra or use 'torch'")
        self.num_levels, self.level_dim, self.bound = num_levels, level_dim, bound
        self.output_dim = num_levels * level_dim
        self.per_level_scale = math.exp(math.log(finest_resolution / base_resolution) / max(num_levels - 1, 1))
        # tcnn only runs on CUDA, so 'auto' picks it only when a GPU is there to run it
        self.backend = "tcnn" if backend == "tcnn" or (
            backend == "auto" and _tcnn() is not None and torch.cuda.is_available()) else "torch"
        if self.backend == "tcnn":
            self.tcnn = _tcnn().Encoding(3, {
                "otype": "HashGrid", "n_levels": num_levels, "n_features_per_level": level_dim,
                "log2_hashmap_size": log2_hashmap_size, "base_resolution": base_resolution,
                "per_level_scale": self.per_level_scale}, dtype=torch.float32)
            return
        table = 2 ** log2_hashmap_size
        resolutions = [int(math.floor(base_resolution * self.per_level_scale ** level)) for level in range(num_levels)]
        sizes = [min((res + 1) ** 3, table) for res in resolutions]
        offsets = [0] + list(torch.tensor(sizes).cumsum(0).tolist())
        self.resolutions = resolutions
        self.register_buffer("_res", torch.tensor(resolutions, dtype=torch.long), persistent=False)
        self.register_buffer("_offset", torch.tensor(offsets[:-1], dtype=torch.long), persistent=False)
        # resolutions grow with the level, so the dense levels are a prefix
        self._num_dense, self._table = sum((r + 1) ** 3 <= table for r in resolutions), table
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], level_dim).uniform_(-1e-4, 1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [N, output_dim] (float32) of points x[N,3]; points outside the bound are clamped to it."""
        unit = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)
        if self.backend == "tcnn":
            if not x.is_cuda:
                raise C123Error("hash-grid backend 'tcnn' got CPU points: move the field to CUDA or use 'torch'")
            return self.tcnn(unit).float()
        return self._encode(unit)

    def _encode(self, unit: torch.Tensor) -> torch.Tensor:
        res = self._res.to(unit.dtype)
        pos = unit[:, None, :] * res[None, :, None]                                  # [N,L,3]
        cell = pos.detach().floor().clamp(max=res[None, :, None] - 1)
        frac = pos - cell
        # per-axis corner coordinates and weights [N,L,3,2]; the 8 corners are their outer products, which
        # keeps the arithmetic on [N,L,2] tensors and only the final combination on [N,L,8]
        c = cell.long()[..., None] + torch.arange(2, device=unit.device)
        w = torch.stack([1 - frac, frac], -1)
        weights = _outer(w[:, :, 0], w[:, :, 1], w[:, :, 2], torch.mul)             # [N,L,8]
        nd = self._num_dense
        side = self._res[:nd, None] + 1
        dense = _outer(c[:, :nd, 0], c[:, :nd, 1] * side, c[:, :nd, 2] * side * side, torch.add)
        hashed = _outer(c[:, nd:, 0] * PRIMES[0], c[:, nd:, 1] * PRIMES[1], c[:, nd:, 2] * PRIMES[2],
                        torch.bitwise_xor) & (self._table - 1)
        # products stay below 2^63 in int64; the low bits match uint32 arithmetic since the table is 2^k
        idx = torch.cat([dense, hashed], 1) + self._offset[None, :, None]
        # index_select's backward (index_add) is several times faster on CPU than advanced indexing's
        feats = self.embeddings.index_select(0, idx.reshape(-1)).reshape(*idx.shape, -1)   # [N,L,8,F]
        return (feats * weights[..., None].to(feats.dtype)).sum(2).reshape(unit.shape[0], -1)


def _outer(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, op) -> torch.Tensor:
    """op-combination of every (x, y, z) corner pair: [...,2] x3 -> [...,8], x-major like the corner bits."""
    return op(op(x[..., :, None, None], y[..., None, :, None]), z[..., None, None, :]).flatten(-3)
