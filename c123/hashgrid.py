"""Multiresolution hash encoding as the authors' code runs it (stable-dreamfusion's gridencoder, `align_corners`
off, smoothstep interpolation), in vectorised PyTorch (the reference), as fused Triton kernels (c123/kernels/hashgrid.py, the CUDA default), and a
tiny-cuda-nn wrapper behind the same interface.

Level l has resolution ceil(base * s^l) with s = (finest / base)^(1 / (L - 1)) and finest = 2048 * bound; its
table holds min(2^log2_hashmap_size, resolution^3) rows rounded up to a multiple of 8. A point u in [0,1]^3 sits
at u * resolution - 0.5 (clamped to [0, resolution - 1]) on the level's lattice of `resolution` vertices per
side; a level whose vertices fit in its table is indexed densely (x + y r + z r^2), larger ones use the spatial
hash (x * 1) ^ (y * 2654435761) ^ (z * 805459861) mod the table size. The 8 corner features are blended with
smoothstep weights t^2 (3 - 2t) (or trilinear ones). Points outside [-bound, bound]^3 encode to zeros. Only the
first ceil(max_level * L) levels are computed; the others are zeros (the coarse-to-fine ramp).

The level layout (resolutions, offsets) is constant data derived from the config: it lives in plain attributes,
not in buffers, so it is neither averaged nor checkpointed. The table is the only state.
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch
from torch import nn

from c123.errors import C123Error

PRIMES = (1, 2654435761, 805459861)
INTERPOLATIONS = ("smoothstep", "linear")


def level_ratio(progress: float) -> float:
    """The coarse-to-fine ramp: fraction of levels active at `progress` (iteration / iterations) of a stage.

    Official nerf/utils.py `train_step` with progressive_level: max_level = min(1, 0.25 + 2 * exp_iter_ratio),
    where exp_iter_ratio restarts at 0 in the DMTet run.
    """
    return min(1.0, 0.25 + 2.0 * progress)


def active_levels(max_level: float, num_levels: int) -> int:
    """How many levels a fraction computes (gridencoder: max(min(ceil(max_level * L), L), 1))."""
    return max(min(math.ceil(max_level * num_levels), num_levels), 1)


def triton_available() -> bool:
    """Whether Triton imports (PyTorch's CUDA wheels on Linux ship it); the fused kernels need it."""
    return importlib.util.find_spec("triton") is not None


def _tcnn():
    try:
        import tinycudann
    except ImportError:  # optional GPU extra; the torch backend covers every other case
        return None
    return tinycudann


BACKENDS = ("auto", "torch", "triton", "tcnn")


class HashGrid(nn.Module):
    """Encodes points x[N,3] in [-bound, bound]^3 into features [N, num_levels * level_dim].

    Backends: 'torch' (vectorised PyTorch, any device), 'triton' (c123.kernels.hashgrid: fused forward and backward
    kernels for CUDA points; CPU points run them only under TRITON_INTERPRET=1, else the torch code), 'tcnn'
    (tiny-cuda-nn's HashGrid: its own lattice alignment, not the official gridencoder's), 'auto' (triton for CUDA
    points when Triton imports, else torch).
    """

    def __init__(self, num_levels: int = 16, level_dim: int = 2, log2_hashmap_size: int = 19,
                 base_resolution: int = 16, finest_resolution: int = 2048, bound: float = 1.0,
                 backend: str = "auto", interpolation: str = "smoothstep"):
        super().__init__()
        if backend not in BACKENDS:
            raise C123Error(f"unknown hash-grid backend '{backend}': use one of {', '.join(BACKENDS)}")
        if interpolation not in INTERPOLATIONS:
            raise C123Error(f"unknown hash-grid interpolation '{interpolation}': use 'smoothstep' or 'linear'")
        if backend == "tcnn" and _tcnn() is None:
            raise C123Error("hash-grid backend 'tcnn' needs tinycudann: pip install the gpu extra or use 'torch'")
        if backend == "triton" and not triton_available():
            raise C123Error("hash-grid backend 'triton' needs triton (PyTorch's CUDA wheels ship it): "
                            "pip install triton or use 'torch'")
        self.num_levels, self.level_dim, self.bound = num_levels, level_dim, bound
        self.interpolation, self.output_dim = interpolation, num_levels * level_dim
        # finest = 2048 * bound as network_grid.py's desired_resolution
        self.per_level_scale = 2.0 ** (math.log2(finest_resolution * bound / base_resolution) / max(num_levels - 1, 1))
        self.backend = backend
        # the active level count also lives on the device, where compiled code and the kernels read it: a new
        # ratio needs neither a host sync nor a recompilation
        self._active = torch.full((1,), num_levels, dtype=torch.int32)
        self.max_level = 1.0
        if self.backend == "tcnn":
            self.tcnn = _tcnn().Encoding(3, {
                "otype": "HashGrid", "n_levels": num_levels, "n_features_per_level": level_dim,
                "log2_hashmap_size": log2_hashmap_size, "base_resolution": base_resolution,
                "per_level_scale": self.per_level_scale, "interpolation": interpolation.capitalize()},
                dtype=torch.float32)
            return
        self._table = 2 ** log2_hashmap_size
        self.resolutions = [math.ceil(base_resolution * self.per_level_scale ** level) for level in range(num_levels)]
        self.level_sizes = [8 * math.ceil(min(self._table, r ** 3) / 8) for r in self.resolutions]
        offsets = [0] + torch.tensor(self.level_sizes).cumsum(0).tolist()
        # resolutions grow with the level, so the dense levels (all vertices fit the table) are a prefix
        self._num_dense = sum(r ** 3 <= size for r, size in zip(self.resolutions, self.level_sizes))
        # constants, not buffers: kept out of state_dict and of any average, moved to the points' device on use
        self._res = torch.tensor(self.resolutions, dtype=torch.long)
        self._offset = torch.tensor(offsets[:-1], dtype=torch.long)
        self.embeddings = nn.Parameter(torch.empty(offsets[-1], level_dim).uniform_(-1e-4, 1e-4))

    @property
    def max_level(self) -> float:
        """Fraction of the levels computed (set by the loop from `level_ratio`); the rest encode to zeros."""
        return self._max_level

    @max_level.setter
    def max_level(self, ratio: float) -> None:
        self._max_level = ratio
        self.levels = active_levels(ratio, self.num_levels)
        self._active.fill_(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features [N, output_dim] (float32) of points x[N,3]; zero outside the bound and beyond max_level."""
        if self.backend == "tcnn":
            return self._tcnn_encode(x)
        if self._res.device != x.device:
            self._res, self._offset, self._active = (t.to(x.device) for t in (self._res, self._offset, self._active))
        if self.backend_for(x.device) == "triton":
            from c123.kernels import hashgrid as kernels
            return kernels.encode(x, self.embeddings, self._res.int(), self._offset.int(), self._active,
                                  bound=self.bound, num_dense=self._num_dense, table_size=self._table,
                                  smooth=self.interpolation == "smoothstep")
        unit = (x + self.bound) / (2 * self.bound)
        inside = ((unit >= 0) & (unit <= 1)).all(-1, keepdim=True)
        if torch.compiler.is_compiling():  # every level, the inactive ones zeroed by the device-side count
            on = (torch.arange(self.num_levels, device=x.device) < self._active).repeat_interleave(self.level_dim)
            feats = self._encode(unit.clamp(0.0, 1.0), self.num_levels) * on
        else:
            feats = self._encode(unit.clamp(0.0, 1.0), self.levels)
        feats = feats * inside
        return torch.cat([feats, feats.new_zeros(x.shape[0], self.output_dim - feats.shape[1])], 1)

    def backend_for(self, device) -> str:
        """The backend that encodes points on `device`: 'auto' resolves to 'triton' for CUDA points when Triton
        imports, else 'torch'; 'triton' runs CPU points through the kernels only under TRITON_INTERPRET=1."""
        device = torch.device(device)
        if self.backend == "tcnn":
            return "tcnn"
        if self.backend in ("auto", "triton") and triton_available() and (
                device.type == "cuda" or (self.backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1")):
            return "triton"
        return "torch"

    def _tcnn_encode(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda:
            raise C123Error("hash-grid backend 'tcnn' got CPU points: move the field to CUDA or use 'torch'")
        unit = (x + self.bound) / (2 * self.bound)
        inside = ((unit >= 0) & (unit <= 1)).all(-1, keepdim=True)
        feats = self.tcnn(unit.clamp(0.0, 1.0)).float()[:, :self.levels * self.level_dim] * inside
        return torch.cat([feats, feats.new_zeros(x.shape[0], self.output_dim - feats.shape[1])], 1)

    def _encode(self, unit: torch.Tensor, levels: int) -> torch.Tensor:
        res_i = self._res[:levels]
        res = res_i.to(unit.dtype)[None, :, None]
        pos = torch.minimum((unit[:, None, :] * res - 0.5).clamp(min=0.0), res - 1)      # [N,L,3]
        cell = pos.detach().floor()
        frac = pos - cell
        if self.interpolation == "smoothstep":
            frac = frac * frac * (3.0 - 2.0 * frac)
        # per-axis corner coordinates and weights [N,L,3,2]; the 8 corners are their outer products, which
        # keeps the arithmetic on [N,L,2] tensors and only the final combination on [N,L,8]
        low = cell.long()
        c = torch.stack([low, torch.minimum(low + 1, res_i[None, :, None] - 1)], -1)
        w = torch.stack([1 - frac, frac], -1)
        weights = _outer(w[:, :, 0], w[:, :, 1], w[:, :, 2], torch.mul)              # [N,L,8]
        nd = min(self._num_dense, levels)
        side = res_i[:nd, None]
        dense = _outer(c[:, :nd, 0], c[:, :nd, 1] * side, c[:, :nd, 2] * side * side, torch.add)
        hashed = _outer(c[:, nd:, 0] * PRIMES[0], c[:, nd:, 1] * PRIMES[1], c[:, nd:, 2] * PRIMES[2],
                        torch.bitwise_xor) & (self._table - 1)
        # products stay below 2^63 in int64; the low bits match uint32 arithmetic since the table is 2^k
        idx = torch.cat([dense, hashed], 1) + self._offset[None, :levels, None]
        if torch.compiler.is_compiling():
            # compiled code keeps the rows for its backward in int32 (the tables hold far fewer than 2^31 rows):
            # 512 bytes a point instead of 1 KB at 16 levels, 11-14% fewer page faults per CPU step; eager
            # index_add with int32 rows is 3x slower on CPU, so eager code keeps int64
            idx = idx.int()
        # index_select's backward (index_add) is several times faster on CPU than advanced indexing's
        # explicit sizes: a chunk may have no points
        feats = self.embeddings.index_select(0, idx.reshape(-1)).reshape(*idx.shape, self.level_dim)  # [N,L,8,F]
        return (feats * weights[..., None].to(feats.dtype)).sum(2).reshape(unit.shape[0], levels * self.level_dim)


def _outer(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, op) -> torch.Tensor:
    """op-combination of every (x, y, z) corner pair: [...,2] x3 -> [...,8], x-major like the corner bits."""
    return op(op(x[..., :, None, None], y[..., None, :, None]), z[..., None, None, :]).flatten(-3)
