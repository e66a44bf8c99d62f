"""The vectorised hash encoding against a naive per-point, per-level, per-corner transcription of the official
gridencoder kernel (align_corners off), the coarse-to-fine level ramp, and state that holds only the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from c123.errors import C123Error
from c123.hashgrid import HashGrid, active_levels, level_ratio


def naive_encode(grid: HashGrid, x: torch.Tensor, interpolation: str, base: int, finest: int,
                 max_level: float = 1.0) -> torch.Tensor:
    """gridencoder.cu `kernel_grid` written out one point, level and corner at a time (uint32 hash arithmetic)."""
    table = grid.embeddings.detach().double()
    hashmap = 2 ** int(round(math.log2(grid._table)))
    levels = max(min(math.ceil(max_level * grid.num_levels), grid.num_levels), 1)
    scale = 2.0 ** (math.log2(finest * grid.bound / base) / (grid.num_levels - 1))
    out = torch.zeros(x.shape[0], grid.output_dim, dtype=torch.float64)
    offset = 0
    for level in range(grid.num_levels):
        res = math.ceil(base * scale ** level)
        size = 8 * math.ceil(min(hashmap, res ** 3) / 8)
        for n, p in enumerate(x.tolist()):
            u = [(v + grid.bound) / (2 * grid.bound) for v in p]
            if level >= levels or any(v < 0 or v > 1 for v in u):
                continue                                   # outside [0,1] or beyond max_level: zeros
            pos = [min(max(v * res - 0.5, 0.0), res - 1.0) for v in u]
            low = [int(math.floor(v)) for v in pos]
            frac = [v - b for v, b in zip(pos, low)]
            if interpolation == "smoothstep":
                frac = [t * t * (3 - 2 * t) for t in frac]
            for corner in range(8):
                bits = [(corner >> d) & 1 for d in range(3)]
                c = [min(b + k, res - 1) for b, k in zip(low, bits)]
                weight = math.prod(t if k else 1 - t for t, k in zip(frac, bits))
                if res ** 3 <= size:
                    index = c[0] + c[1] * res + c[2] * res * res
                else:
                    index = (c[0] * 1) ^ ((c[1] * 2654435761) & 0xFFFFFFFF) ^ ((c[2] * 805459861) & 0xFFFFFFFF)
                dim = grid.level_dim
                out[n, level * dim:(level + 1) * dim] += weight * table[offset + index % size]
        offset += size
    return out


def random_points(n: int) -> torch.Tensor:
    x = torch.rand(n, 3) * 2.2 - 1.1   # includes points outside the bound (zeros there) and the corners
    x[:3] = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0]])
    return x


@pytest.mark.parametrize("interpolation", ["smoothstep", "linear"])
def test_vectorised_hashgrid_matches_the_official_kernel_on_dense_and_hashed_levels(interpolation):
    torch.manual_seed(0)
    grid = HashGrid(num_levels=6, level_dim=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=64,
                    bound=1.0, backend="torch", interpolation=interpolation)
    assert 0 < grid._num_dense < grid.num_levels  # both kinds of level are exercised
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)  # the default 1e-4 init would make any mismatch tiny
    x = random_points(40)
    assert torch.allclose(grid(x).double(), naive_encode(grid, x, interpolation, 4, 64), atol=1e-5)
    grid.max_level = 0.4                # ceil(0.4 * 6) = 3 levels
    assert torch.allclose(grid(x).double(), naive_encode(grid, x, interpolation, 4, 64, 0.4), atol=1e-5)


def test_paper_grid_has_the_official_level_layout():
    # encoding.py / gridencoder defaults of network_grid.py: 16 levels x 2 features, 2^19 rows, base 16,
    # desired_resolution 2048 * bound; resolution ceil(16 * s^l), rows min(2^19, res^3) rounded up to 8
    grid = HashGrid(backend="torch")
    assert grid.resolutions == [16, 23, 31, 43, 59, 81, 112, 154, 213, 295, 407, 562, 777, 1073, 1483, 2048]
    assert grid.level_sizes[:5] == [4096, 12168, 29792, 79512, 205384] and grid.level_sizes[5:] == [2 ** 19] * 11
    assert grid._num_dense == 5 and grid.embeddings.shape == (6098120, 2) and grid.output_dim == 32
    # desired resolution 2048 * bound, in grid.py's float64 arithmetic (16 s^15 = 4096.000000000004 -> 4097)
    scale = np.exp2(np.log2(2048 * 2.0 / 16) / 15)
    assert HashGrid(bound=2.0, backend="torch").resolutions == [int(np.ceil(16 * scale ** i)) for i in range(16)]


def test_smoothstep_weights_have_zero_slope_at_lattice_vertices():
    grid = HashGrid(num_levels=1, log2_hashmap_size=12, base_resolution=8, finest_resolution=8, backend="torch")
    linear = HashGrid(num_levels=1, log2_hashmap_size=12, base_resolution=8, finest_resolution=8, backend="torch",
                      interpolation="linear")
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
        linear.embeddings.copy_(grid.embeddings)
    # lattice vertex i sits at u = (i + 0.5) / 8, i.e. x = 2 u - 1
    x = torch.tensor([[2 * 3.5 / 8 - 1, 2 * 4.5 / 8 - 1, 2 * 2.5 / 8 - 1]]).requires_grad_(True)
    (smooth_grad,) = torch.autograd.grad(grid(x).sum(), x)
    (linear_grad,) = torch.autograd.grad(linear(x).sum(), x)
    assert smooth_grad.abs().max() < 1e-6 < linear_grad.abs().max()
    assert torch.allclose(grid(x), linear(x))                   # both pass through the vertex value


def test_level_ramp_is_the_official_coarse_to_fine_schedule():
    assert level_ratio(0.0) == 0.25 and level_ratio(0.1) == pytest.approx(0.45) and level_ratio(0.375) == 1.0
    assert level_ratio(0.9) == 1.0
    assert [active_levels(r, 16) for r in (0.0, 0.25, 0.2504, 0.5, 1.0)] == [1, 4, 5, 8, 16]


def test_levels_beyond_max_level_are_zero_and_get_no_gradient():
    grid = HashGrid(num_levels=8, log2_hashmap_size=12, base_resolution=4, finest_resolution=128, backend="torch")
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    grid.max_level = level_ratio(0.0)                              # 2 of 8 levels
    feats = grid(torch.rand(50, 3) * 1.8 - 0.9)
    assert feats[:, :4].abs().sum() > 0 and (feats[:, 4:] == 0).all()
    feats.sum().backward()
    rows = grid.embeddings.grad.abs().sum(1) > 0
    first_two = sum(grid.level_sizes[:2])
    assert rows[:first_two].any() and not rows[first_two:].any()


def test_points_outside_the_bound_encode_to_zeros():
    grid = HashGrid(num_levels=4, log2_hashmap_size=10, base_resolution=4, finest_resolution=32, backend="torch")
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    feats = grid(torch.tensor([[1.01, 0.0, 0.0], [0.0, -1.2, 0.5], [0.99, 0.0, 0.0]]))
    assert (feats[:2] == 0).all() and feats[2].abs().sum() > 0


def test_state_is_the_table_only_and_a_reload_reproduces_the_encoding():
    grid = HashGrid(num_levels=6, log2_hashmap_size=10, base_resolution=4, finest_resolution=64, backend="torch")
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1)
    state = grid.state_dict()
    assert list(state) == ["embeddings"] and state["embeddings"].is_floating_point()
    assert all(b.is_floating_point() for b in grid.buffers())    # nothing an average could truncate
    fresh = HashGrid(num_levels=6, log2_hashmap_size=10, base_resolution=4, finest_resolution=64, backend="torch")
    fresh.load_state_dict(state)
    x = random_points(30)
    assert torch.equal(fresh(x), grid(x))


def test_hashgrid_output_shape_and_init_range():
    grid = HashGrid(num_levels=8, level_dim=2, log2_hashmap_size=12, base_resolution=16, finest_resolution=256,
                    backend="torch")
    assert grid(torch.rand(5, 3)).shape == (5, 16) == (5, grid.output_dim)
    assert grid.embeddings.abs().max() <= 1e-4
    assert grid.resolutions[0] == 16 and grid.resolutions[-1] == 256
    assert all(a < b for a, b in zip(grid.resolutions, grid.resolutions[1:]))


@pytest.mark.parametrize("interpolation", ["smoothstep", "linear"])
def test_hashgrid_gradients_in_points_and_table_match_finite_differences(interpolation):
    """Both gradients the NeRF trains with (table entries, and points for the normal from the density) agree with
    central finite differences in float64 (torch.autograd.gradcheck), not merely non-zero."""
    grid = HashGrid(num_levels=4, level_dim=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=32,
                    backend="torch", interpolation=interpolation).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        grid.embeddings.uniform_(-1, 1, generator=gen)
    x = (torch.rand(16, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)
    assert torch.autograd.gradcheck(grid, (x,), eps=1e-6, atol=1e-5)
    table = grid.embeddings.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda t: torch.func.functional_call(grid, {"embeddings": t}, (x.detach(),)), (table,),
        eps=1e-6, atol=1e-5, fast_mode=True)
    (gx,) = torch.autograd.grad(grid(x).pow(2).sum(), x)
    assert gx.abs().sum() > 0                       # the check above is not vacuous: the points do move the output


def test_hashgrid_rejects_unknown_backend_and_interpolation():
    with pytest.raises(C123Error, match="backend"):
        HashGrid(backend="cuda-magic")
    with pytest.raises(C123Error, match="interpolation"):
        HashGrid(backend="torch", interpolation="cubic")


def test_auto_backend_is_torch_without_cuda_and_tcnn_without_tinycudann_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only selection")
    grid = HashGrid(num_levels=2, log2_hashmap_size=8, finest_resolution=32, backend="auto")
    assert grid.backend_for("cpu") == "torch"
    try:
        import tinycudann  # noqa: F401
    except ImportError:
        with pytest.raises(C123Error, match="tinycudann"):
            HashGrid(backend="tcnn")
