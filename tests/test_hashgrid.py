"""The vectorised hash encoding against a naive per-point, per-level, per-corner reference."""

from __future__ import annotations

import math

import pytest
import torch

from c123.errors import C123Error
from c123.hashgrid import HashGrid


def naive_encode(grid: HashGrid, x: torch.Tensor) -> torch.Tensor:
    """Instant-NGP's encoding written out one point, level and corner at a time (uint32 hash arithmetic)."""
    table = grid.embeddings.detach().double()
    size = 2 ** int(round(math.log2(grid._table)))
    out = torch.zeros(x.shape[0], grid.output_dim, dtype=torch.float64)
    offset = 0
    for level, res in enumerate(grid.resolutions):
        dense = (res + 1) ** 3 <= size
        level_size = (res + 1) ** 3 if dense else size
        for n, p in enumerate(x.tolist()):
            u = [min(max((v + grid.bound) / (2 * grid.bound), 0.0), 1.0) * res for v in p]
            base = [min(int(math.floor(v)), res - 1) for v in u]
            for corner in range(8):
                bits = [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1]
                c = [b + k for b, k in zip(base, bits)]
                weight = 1.0
                for v, b, k in zip(u, base, bits):
                    weight *= (v - b) if k else (1.0 - (v - b))
                if dense:
                    index = c[0] + (res + 1) * c[1] + (res + 1) ** 2 * c[2]
                else:
                    index = ((c[0] * 1) ^ ((c[1] * 2654435761) & 0xFFFFFFFF) ^ ((c[2] * 805459861) & 0xFFFFFFFF))
                    index = (index & 0xFFFFFFFF) % size
                dim = grid.level_dim
                out[n, level * dim:(level + 1) * dim] += weight * table[offset + index]
        offset += level_size
    return out


def test_vectorised_hashgrid_matches_naive_reference_on_dense_and_hashed_levels():
    torch.manual_seed(0)
    grid = HashGrid(num_levels=6, level_dim=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=64,
                    bound=1.0, backend="torch")
    assert 0 < grid._num_dense < grid.num_levels  # both kinds of level are exercised
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)  # the default 1e-4 init would make any mismatch tiny
    x = torch.rand(40, 3) * 2.2 - 1.1   # includes points outside the bound (clamped) and the corners
    x[:3] = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    assert torch.allclose(grid(x).double(), naive_encode(grid, x), atol=1e-5)


def test_hashgrid_output_shape_init_range_and_level_resolutions():
    grid = HashGrid(num_levels=8, level_dim=2, log2_hashmap_size=12, base_resolution=16, finest_resolution=256,
                    backend="torch")
    assert grid(torch.rand(5, 3)).shape == (5, 16) == (5, grid.output_dim)
    assert grid.embeddings.abs().max() <= 1e-4
    assert grid.resolutions[0] == 16 and grid.resolutions[-1] in (255, 256)
    assert all(a < b for a, b in zip(grid.resolutions, grid.resolutions[1:]))


def test_hashgrid_is_differentiable_in_points_and_table():
    grid = HashGrid(num_levels=4, level_dim=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=32,
                    backend="torch")
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    x = (torch.rand(16, 3) * 1.6 - 0.8).requires_grad_(True)
    (gx,) = torch.autograd.grad(grid(x).pow(2).sum(), x, create_graph=True)
    assert gx.abs().sum() > 0
    gx.sum().backward()   # second order, as normal regularisers need
    assert grid.embeddings.grad.abs().sum() > 0


def test_hashgrid_rejects_unknown_backend():
    with pytest.raises(C123Error, match="backend"):
        HashGrid(backend="cuda-magic")


def test_auto_backend_is_torch_without_cuda_and_tcnn_without_tinycudann_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only selection")
    assert HashGrid(num_levels=2, log2_hashmap_size=8, finest_resolution=32, backend="auto").backend == "torch"
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        with pytest.raises(C123Error, match="tinycudann"):
            HashGrid(backend="tcnn")
