"""The hash-grid encoding as two fused Triton kernels (forward, backward): the arithmetic of c123/hashgrid.py's
PyTorch reference, one pass over the points per level, reading only the 8 corner rows it interpolates.

Per point and level the forward reads the point (12 B) and 8 corner rows (8 x level_dim x 4 B) and writes
level_dim floats; the backward adds each corner's share of the output gradient into the table (atomics) and,
when the points need it (DMTet's texture lookups move with the mesh), the gradient with respect to the points.
Levels at or above the active count (a device tensor: the coarse-to-fine ramp changes it without a host sync
or a recompile) are zeros. This module imports triton: c123.hashgrid imports it only when the kernels run.
`TRITON_INTERPRET=1` set before that import runs them on CPU tensors through Triton's interpreter (how the tests
check them without a GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 128
PRIMES = (2654435761, 805459861)
"""The spatial hash's y and z primes (x's is 1), passed to the kernels as int64 arguments."""


@triton.jit
def axis(u, rf, SMOOTH: tl.constexpr):
    """One axis: the lower cell index, the weight of the upper corner, and d(weight)/d(u)."""
    u = tl.minimum(tl.maximum(u, 0.0), 1.0)
    p = u * rf - 0.5
    # d pos / d u as torch's clamp(min=0) then minimum(., r - 1) pass it (half at a tie)
    dp = tl.where(p >= 0.0, rf, 0.0) * tl.where(p < rf - 1.0, 1.0, tl.where(p == rf - 1.0, 0.5, 0.0))
    pos = tl.minimum(tl.maximum(p, 0.0), rf - 1.0)
    cell = tl.floor(pos)
    f = pos - cell
    if SMOOTH:
        w = f * f * (3.0 - 2.0 * f)
        dw = 6.0 * f * (1.0 - f) * dp
    else:
        w = f
        dw = dp
    return cell.to(tl.int64), w, dw


@triton.jit
def corner_row(cx, cy, cz, bx: tl.constexpr, by: tl.constexpr, bz: tl.constexpr, r, dense, offset,
               hash_mask, prime_y, prime_z):
    """Table row of corner (bx, by, bz) of the cells (dense index, or the spatial hash)."""
    x = tl.minimum(cx + bx, r - 1)
    y = tl.minimum(cy + by, r - 1)
    z = tl.minimum(cz + bz, r - 1)
    dense_idx = x + y * r + z * r * r
    hashed = (x ^ (y * prime_y) ^ (z * prime_z)) & hash_mask
    return offset + tl.where(dense, dense_idx, hashed)


@triton.jit
def level_setup(x_ptr, res_ptr, offset_ptr, active_ptr, n, level, N, bound, num_dense, SMOOTH: tl.constexpr,
                BLOCK_N: tl.constexpr):
    """For the block's points at one level: their rows, which exist, which are live (inside the bound, the level
    active), the level's resolution (int64), first table row and indexing (dense or hashed), and per axis the
    lower cell index, upper-corner weight and d(weight)/d(unit coordinate)."""
    rows = n * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = rows < N
    r = tl.load(res_ptr + level)
    rf = r.to(tl.float32)
    xs = tl.load(x_ptr + rows * 3 + 0, mask=ok, other=0.0)
    ys = tl.load(x_ptr + rows * 3 + 1, mask=ok, other=0.0)
    zs = tl.load(x_ptr + rows * 3 + 2, mask=ok, other=0.0)
    ux, uy, uz = (xs + bound) / (2.0 * bound), (ys + bound) / (2.0 * bound), (zs + bound) / (2.0 * bound)
    inside = (ux >= 0) & (ux <= 1) & (uy >= 0) & (uy <= 1) & (uz >= 0) & (uz <= 1) & ok
    live = inside & (level < tl.load(active_ptr))
    offset = tl.load(offset_ptr + level).to(tl.int64)
    cx, wx, dx = axis(ux, rf, SMOOTH)
    cy, wy, dy = axis(uy, rf, SMOOTH)
    cz, wz, dz = axis(uz, rf, SMOOTH)
    return rows, ok, live, r.to(tl.int64), offset, level < num_dense, cx, wx, dx, cy, wy, dy, cz, wz, dz


@triton.jit
def forward_kernel(x_ptr, emb_ptr, out_ptr, res_ptr, offset_ptr, active_ptr, N, bound, num_dense, hash_mask,
                   prime_y, prime_z, L: tl.constexpr, F: tl.constexpr, SMOOTH: tl.constexpr, BLOCK_N: tl.constexpr):
    n, level = tl.program_id(0), tl.program_id(1)
    rows, ok, load, r, offset, dense, cx, wx, _, cy, wy, _, cz, wz, _ = level_setup(
        x_ptr, res_ptr, offset_ptr, active_ptr, n, level, N, bound, num_dense, SMOOTH, BLOCK_N)
    feats = tl.arange(0, F)
    acc = tl.zeros((BLOCK_N, F), dtype=tl.float32)
    for c in tl.static_range(8):
        bx: tl.constexpr = (c >> 2) & 1
        by: tl.constexpr = (c >> 1) & 1
        bz: tl.constexpr = c & 1
        w = (wx if bx else 1.0 - wx) * (wy if by else 1.0 - wy) * (wz if bz else 1.0 - wz)
        row = corner_row(cx, cy, cz, bx, by, bz, r, dense, offset, hash_mask, prime_y, prime_z)
        e = tl.load(emb_ptr + row[:, None] * F + feats[None, :], mask=load[:, None], other=0.0)
        acc += w[:, None] * e
    acc = tl.where(load[:, None], acc, 0.0)
    tl.store(out_ptr + rows[:, None] * (L * F) + level * F + feats[None, :], acc, mask=ok[:, None])


@triton.jit
def backward_kernel(x_ptr, emb_ptr, grad_ptr, grad_emb_ptr, grad_x_ptr, res_ptr, offset_ptr, active_ptr, N,
                    bound, num_dense, hash_mask, prime_y, prime_z, L: tl.constexpr, F: tl.constexpr, SMOOTH: tl.constexpr,
                    NEED_X: tl.constexpr, BLOCK_N: tl.constexpr):
    n, level = tl.program_id(0), tl.program_id(1)
    rows, ok, live, r, offset, dense, cx, wx, dx, cy, wy, dy, cz, wz, dz = level_setup(
        x_ptr, res_ptr, offset_ptr, active_ptr, n, level, N, bound, num_dense, SMOOTH, BLOCK_N)
    feats = tl.arange(0, F)
    g = tl.load(grad_ptr + rows[:, None] * (L * F) + level * F + feats[None, :], mask=live[:, None], other=0.0)
    gx = tl.zeros((BLOCK_N,), dtype=tl.float32)
    gy = tl.zeros((BLOCK_N,), dtype=tl.float32)
    gz = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c in tl.static_range(8):
        bx: tl.constexpr = (c >> 2) & 1
        by: tl.constexpr = (c >> 1) & 1
        bz: tl.constexpr = c & 1
        ax = wx if bx else 1.0 - wx
        ay = wy if by else 1.0 - wy
        az = wz if bz else 1.0 - wz
        row = corner_row(cx, cy, cz, bx, by, bz, r, dense, offset, hash_mask, prime_y, prime_z)
        where = row[:, None] * F + feats[None, :]
        tl.atomic_add(grad_emb_ptr + where, (ax * ay * az)[:, None] * g, mask=live[:, None])
        if NEED_X:
            e = tl.load(emb_ptr + where, mask=live[:, None], other=0.0)
            ge = tl.sum(e * g, axis=1)
            gx += ge * (dx if bx else -dx) * ay * az
            gy += ge * ax * (dy if by else -dy) * az
            gz += ge * ax * ay * (dz if bz else -dz)
    if NEED_X:
        scale = 1.0 / (2.0 * bound)
        tl.atomic_add(grad_x_ptr + rows * 3 + 0, gx * scale, mask=live)
        tl.atomic_add(grad_x_ptr + rows * 3 + 1, gy * scale, mask=live)
        tl.atomic_add(grad_x_ptr + rows * 3 + 2, gz * scale, mask=live)


class _Encode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, embeddings, res, offsets, active, bound, num_dense, table_size, level_dim, smooth):
        x = x.contiguous()
        n, levels = x.shape[0], res.shape[0]
        out = torch.empty(n, levels * level_dim, device=x.device, dtype=torch.float32)
        ctx.save_for_backward(x, embeddings, res, offsets, active)
        ctx.constants = (bound, num_dense, table_size, level_dim, smooth)
        if n == 0:
            return out
        forward_kernel[(triton_cdiv(n, BLOCK), levels)](
            x, embeddings, out, res, offsets, active, n, bound, num_dense, table_size - 1, *PRIMES,
            L=levels, F=level_dim, SMOOTH=smooth, BLOCK_N=BLOCK)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, embeddings, res, offsets, active = ctx.saved_tensors
        bound, num_dense, table_size, level_dim, smooth = ctx.constants
        n, levels = x.shape[0], res.shape[0]
        need_x = ctx.needs_input_grad[0]
        grad_emb = torch.zeros_like(embeddings)
        grad_x = torch.zeros_like(x) if need_x else x.new_zeros(1)
        if n == 0:
            return (grad_x if need_x else None), grad_emb, None, None, None, None, None, None, None, None
        backward_kernel[(triton_cdiv(n, BLOCK), levels)](
            x, embeddings, grad.contiguous(), grad_emb, grad_x, res, offsets, active, n, bound, num_dense,
            table_size - 1, *PRIMES, L=levels, F=level_dim, SMOOTH=smooth, NEED_X=need_x, BLOCK_N=BLOCK)
        return (grad_x if need_x else None), grad_emb, None, None, None, None, None, None, None, None


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def encode(x: torch.Tensor, embeddings: torch.Tensor, res: torch.Tensor, offsets: torch.Tensor,
           active: torch.Tensor, *, bound: float, num_dense: int, table_size: int, smooth: bool) -> torch.Tensor:
    """Features [N, L * level_dim] of points x [N,3] (zeros outside [-bound, bound]^3 and at levels >= active[0]).

    res, offsets: int32 [L] per-level resolution and first table row; active: int32 [1]; levels below
    `num_dense` are indexed densely, the others by the spatial hash modulo `table_size` (a power of two)."""
    return _Encode.apply(x, embeddings, res, offsets, active, float(bound), int(num_dense), int(table_size),
                         embeddings.shape[1], bool(smooth))
