"""Differentiable triangle rasteriser with nvdiffrast's interface: a pure-PyTorch version and an nvdiffrast wrapper.

Conventions follow nvdiffrast: `clip_pos[B,V,4]` are homogeneous clip coordinates; image row 0 is NDC y = -1;
`rast[B,H,W,4]` holds (u, v, z/w, triangle_id + 1) with 0 meaning empty, and an attribute interpolates as
u * a0 + v * a1 + (1 - u - v) * a2 (perspective-correct barycentrics).

The torch version splits rasterisation in two: which triangle is nearest at each pixel centre is found without
gradients (triangles binned into square tiles by bounding box, processed in chunks, z-buffer by a 64-bit
scatter-min of (depth bits, triangle id)); the barycentrics and depth of the winning triangle are then recomputed
differentiably from `clip_pos`. Silhouette gradients come from `antialias`, which is nvdiffrast's analytic edge
antialiasing: for horizontally (vertically) neighbouring pixels showing different triangles, a steep (flat)
silhouette edge of the nearer triangle that crosses the segment between the pixel centres blends the two
colours by where it crosses, so colours and opacity change continuously, and differentiably, with the vertex
positions; a pixel centre on the edge gets half of each colour.
"""

from __future__ import annotations

import torch

from c123.errors import C123Error

_PIXELS_PER_CHUNK = 1 << 22  # pixel tests per chunk of (triangle, tile) pairs: bounds peak memory to ~0.5 GB


def rasterize(clip_pos: torch.Tensor, faces: torch.Tensor, resolution) -> torch.Tensor:
    """rast[B,H,W,4] = (u, v, z/w, triangle_id + 1), differentiable w.r.t. clip_pos where covered."""
    height, width = resolution
    faces = faces.long()
    with torch.no_grad():
        tri = _nearest_triangles(clip_pos.detach(), faces, height, width)
    return _barycentrics(clip_pos, faces, tri, height, width)


def interpolate(attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-pixel attributes [B,H,W,C] from per-vertex ones [B or 1,V,C] (or [V,C]); zero where empty."""
    if attr.dim() == 2:
        attr = attr[None]
    batch, height, width = rast.shape[:3]
    tri = rast[..., 3].detach().long().reshape(-1) - 1
    pix = torch.nonzero(tri >= 0).squeeze(1)
    b = pix // (height * width)
    corners = faces.long()[tri[pix]]                                   # [N,3]
    a = attr[(b if attr.shape[0] > 1 else torch.zeros_like(b))[:, None], corners]  # [N,3,C]
    uv = rast.reshape(-1, 4)[pix, :2]
    bary = torch.cat([uv, 1.0 - uv.sum(-1, keepdim=True)], -1)
    values = (bary[..., None] * a).sum(1)
    out = attr.new_zeros(batch * height * width, attr.shape[-1]).index_copy(0, pix, values)
    return out.reshape(batch, height, width, -1)


def antialias(color: torch.Tensor, rast: torch.Tensor, clip_pos: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Analytic silhouette antialiasing of color[B,H,W,C] (nvdiffrast's method), differentiable w.r.t. clip_pos."""
    batch, height, width, channels = color.shape
    faces = faces.long()
    tri = rast[..., 3].detach().long().reshape(-1) - 1
    z = rast[..., 2].detach().reshape(-1)
    screen = _screen(clip_pos, height, width)                          # [B,V,2] pixel units
    silhouette = _silhouette_edges(screen.detach(), faces)             # [B,F,3] bool
    flat = color.reshape(-1, channels)
    out = flat
    idx = torch.arange(batch * height * width, device=color.device).reshape(batch, height, width)
    for first, step, axis in ((idx[:, :, :-1], 1, 0), (idx[:, :-1, :], width, 1)):
        a = first.reshape(-1)
        a = a[tri[a] != tri[a + step]]
        b = a + step
        # the occluder is the pixel whose triangle is present and nearer
        a_front = (tri[b] < 0) | ((tri[a] >= 0) & (z[a] <= z[b]))
        p, q = torch.where(a_front, a, b), torch.where(a_front, b, a)
        t, ok = _edge_crossing(screen, faces, silhouette, tri[p], p, q, height, width, axis)
        p, q, t = p[ok], q[ok], t[ok, None]
        diff = flat[q] - flat[p]
        out = out.index_add(0, p, (0.5 - t).clamp(min=0) * diff)       # edge inside p's pixel: p sees q's colour
        out = out.index_add(0, q, (0.5 - t).clamp(max=0) * diff)       # edge inside q's pixel: q sees p's colour
    return out.reshape(batch, height, width, channels)


class TorchRasterizer:
    """The pure-PyTorch rasteriser (CPU or CUDA)."""

    name = "torch"

    def rasterize(self, clip_pos, faces, resolution):
        return rasterize(clip_pos, faces, resolution)

    def interpolate(self, attr, rast, faces):
        return interpolate(attr, rast, faces)

    def antialias(self, color, rast, clip_pos, faces):
        return antialias(color, rast, clip_pos, faces)


class NvdiffrastRasterizer:
    """Thin wrapper over nvdiffrast.torch (CUDA, float32); returns the same tensors as TorchRasterizer."""

    name = "nvdiffrast"

    def __init__(self, device):
        import nvdiffrast.torch as dr

        self.dr = dr
        self.ctx = dr.RasterizeCudaContext(device=device)

    def rasterize(self, clip_pos, faces, resolution):
        return self.dr.rasterize(self.ctx, clip_pos.float().contiguous(), faces.int().contiguous(), tuple(resolution))[0]

    def interpolate(self, attr, rast, faces):
        return self.dr.interpolate(attr.float().contiguous(), rast, faces.int().contiguous())[0]

    def antialias(self, color, rast, clip_pos, faces):
        return self.dr.antialias(color.contiguous(), rast, clip_pos.float().contiguous(), faces.int().contiguous())


def get_rasterizer(backend: str = "auto", device=None):
    """'auto': nvdiffrast when importable and device is CUDA, else torch; 'torch'; 'nvdiffrast'."""
    device = torch.device(device if device is not None else "cpu")
    if backend == "torch":
        return TorchRasterizer()
    if backend not in ("auto", "nvdiffrast"):
        raise C123Error(f"unknown rasteriser backend '{backend}': use 'auto', 'torch' or 'nvdiffrast'")
    if device.type == "cuda":
        try:
            return NvdiffrastRasterizer(device)
        except ImportError:
            pass
    if backend == "nvdiffrast":
        raise C123Error("rasteriser backend 'nvdiffrast' needs nvdiffrast and a CUDA device: "
                        "pip install nvdiffrast (or set dmtet.backend=torch)")
    return TorchRasterizer()


def _screen(clip_pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip coordinates -> pixel coordinates (x = column, y = row, pixel centres at integers)."""
    ndc = clip_pos[..., :2] / clip_pos[..., 3:4]
    scale = ndc.new_tensor([width, height])
    return (ndc + 1.0) * 0.5 * scale - 0.5


def _nearest_triangles(clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Index of the nearest triangle covering each pixel centre, -1 where none: [B*H*W] long."""
    batch, num_faces = clip_pos.shape[0], faces.shape[0]
    device = clip_pos.device
    screen = _screen(clip_pos, height, width)[:, faces]                 # [B,F,3,2]
    zw = (clip_pos[..., 2] / clip_pos[..., 3])[:, faces]                # [B,F,3]
    w = clip_pos[..., 3][:, faces]
    lo = screen.amin(2).ceil()
    hi = screen.amax(2).floor()
    lo = torch.maximum(lo, lo.new_zeros(2))
    hi = torch.minimum(hi, hi.new_tensor([width - 1, height - 1]))
    area = _cross2(screen[..., 1, :] - screen[..., 0, :], screen[..., 2, :] - screen[..., 0, :])
    # triangles crossing the camera plane are dropped rather than clipped (objects stay in front of the camera)
    keep = (w > 0).all(-1) & (lo <= hi).all(-1) & (area.abs() > 1e-12)
    bf = torch.nonzero(keep.reshape(-1)).squeeze(1)                    # flat (batch, face) ids
    tri = torch.full((batch * height * width,), -1, dtype=torch.long, device=device)
    if bf.numel() == 0:
        return tri
    lo, hi = lo.reshape(-1, 2)[bf].long(), hi.reshape(-1, 2)[bf].long()
    extent = (hi - lo + 1).amax(1).float().median().item()
    tile = int(min(16, max(2, 2 ** round(torch.log2(torch.tensor(max(extent, 1.0))).item()))))
    t_lo, t_hi = lo // tile, hi // tile
    t_count = t_hi - t_lo + 1
    n_tiles = t_count[:, 0] * t_count[:, 1]
    pair_bf = torch.repeat_interleave(torch.arange(bf.numel(), device=device), n_tiles)
    local = torch.arange(pair_bf.numel(), device=device) - torch.repeat_interleave(n_tiles.cumsum(0) - n_tiles, n_tiles)
    tx = t_lo[pair_bf, 0] + local % t_count[pair_bf, 0]
    ty = t_lo[pair_bf, 1] + local // t_count[pair_bf, 0]
    offs = torch.arange(tile, device=device)
    oy, ox = torch.meshgrid(offs, offs, indexing="ij")
    ox, oy = ox.reshape(1, -1), oy.reshape(1, -1)
    s_flat, z_flat = screen.reshape(-1, 3, 2), zw.reshape(-1, 3)
    best = torch.full((batch * height * width,), torch.iinfo(torch.int64).max, dtype=torch.long, device=device)
    chunk = max(1, _PIXELS_PER_CHUNK // (tile * tile))
    for start in range(0, pair_bf.numel(), chunk):
        sl = slice(start, start + chunk)
        g = bf[pair_bf[sl]]                                             # flat (batch, face)
        px = (tx[sl, None] * tile + ox).to(screen.dtype)
        py = (ty[sl, None] * tile + oy).to(screen.dtype)
        v = s_flat[g]                                                   # [P,3,2]
        e0 = _edge(v[:, 1], v[:, 2], px, py)
        e1 = _edge(v[:, 2], v[:, 0], px, py)
        e2 = _edge(v[:, 0], v[:, 1], px, py)
        area_g = (e0 + e1 + e2)
        inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
        inside &= (px < width) & (py < height)
        zg = z_flat[g]
        depth = (e0 * zg[:, :1] + e1 * zg[:, 1:2] + e2 * zg[:, 2:]) / area_g
        inside &= (depth >= -1) & (depth <= 1)
        rows, cols = torch.nonzero(inside, as_tuple=True)
        if rows.numel() == 0:
            continue
        b = g[rows] // num_faces
        pix = b * height * width + py[rows, cols].long() * width + px[rows, cols].long()
        # non-negative float32 bit patterns order like the floats: (depth bits, face id) sorts nearest-first
        bits = ((depth[rows, cols] + 1.0) * 0.5).float().contiguous().view(torch.int32).long()
        key = (bits << 32) | (g[rows] % num_faces)
        best.scatter_reduce_(0, pix, key, reduce="amin")
    hit = best != torch.iinfo(torch.int64).max
    tri[hit] = best[hit] & 0xFFFFFFFF
    return tri


def _barycentrics(clip_pos: torch.Tensor, faces: torch.Tensor, tri: torch.Tensor, height: int, width: int):
    """rast from the winning triangle per pixel, recomputed differentiably from clip_pos."""
    batch = clip_pos.shape[0]
    num_pix = tri.numel()
    height_width = height * width
    pix = torch.nonzero(tri >= 0).squeeze(1)
    b = pix // height_width
    v = clip_pos[b[:, None], faces[tri[pix]]]                            # [N,3,4]
    ndc = v[..., :2] / v[..., 3:4]
    rem = pix % height_width
    centre = torch.stack([(2 * (rem % width) + 1).to(v.dtype) / width - 1,
                          (2 * (rem // width) + 1).to(v.dtype) / height - 1], -1)
    e0 = _cross2(ndc[:, 2] - ndc[:, 1], centre - ndc[:, 1])
    e1 = _cross2(ndc[:, 0] - ndc[:, 2], centre - ndc[:, 2])
    e2 = _cross2(ndc[:, 1] - ndc[:, 0], centre - ndc[:, 0])
    screen_bary = torch.stack([e0, e1, e2], -1)
    screen_bary = screen_bary / screen_bary.sum(-1, keepdim=True)
    persp = screen_bary / v[..., 3]
    bary = persp / persp.sum(-1, keepdim=True)
    zw = (screen_bary * v[..., 2] / v[..., 3]).sum(-1)
    values = torch.stack([bary[:, 0], bary[:, 1], zw, (tri[pix] + 1).to(v.dtype)], -1)
    out = clip_pos.new_zeros(num_pix, 4).index_copy(0, pix, values)
    return out.reshape(batch, height, width, 4)


def _silhouette_edges(screen: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[B,F,3] bool: edge k = (f[k], f[k+1]) is open, non-manifold, or between a front- and a back-facing face."""
    batch, num_verts = screen.shape[:2]
    ends = torch.stack([faces, faces.roll(-1, 1)], -1).sort(-1).values.reshape(-1, 2)
    _, edge_id, counts = torch.unique(ends[:, 0] * num_verts + ends[:, 1], return_inverse=True, return_counts=True)
    v = screen[:, faces]
    front = (_cross2(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0]) > 0).long()
    front = front[:, :, None].expand(-1, -1, 3).reshape(batch, -1)
    index = edge_id.expand(batch, -1)
    lo = front.new_ones(batch, counts.numel()).scatter_reduce(1, index, front, reduce="amin")
    hi = front.new_zeros(batch, counts.numel()).scatter_reduce(1, index, front, reduce="amax")
    return ((counts[edge_id] != 2)[None] | (lo != hi)[:, edge_id]).reshape(batch, -1, 3)


def _edge_crossing(screen, faces, silhouette, tri, p, q, height, width, axis):
    """Where the segment from pixel centre p to its neighbour q leaves triangle tri, as t in [0,1] from p.

    Returns (t, ok): ok where the exit edge is a silhouette edge. axis 0: horizontal neighbours, 1: vertical.
    """
    b, rem = p // (height * width), p % (height * width)
    centre = torch.stack([rem % width, rem // width], -1).to(screen.dtype)
    direction = torch.where(q > p, 1.0, -1.0).to(screen.dtype)
    corners = faces[tri]                                                 # [N,3]
    start = screen[b[:, None], corners]                                  # [N,3,2] edge k starts at corner k
    end = screen[b[:, None], corners.roll(-1, 1)]
    along, fixed = axis, 1 - axis
    f0 = centre[:, None, fixed]
    da, db = start[..., fixed] - f0, end[..., fixed] - f0
    denom = end[..., fixed] - start[..., fixed]
    crosses = (da * db <= 0) & (denom != 0)
    safe = torch.where(crosses, denom, torch.ones_like(denom))
    hit = start[..., along] - da * (end[..., along] - start[..., along]) / safe
    t = (hit - centre[:, None, along]) * direction[:, None]
    valid = crosses & (t >= 0) & (t <= 1)
    k = torch.where(valid, t.detach(), torch.full_like(t, float("inf"))).argmin(1, keepdim=True)
    ok = valid.gather(1, k)[:, 0] & silhouette[b, tri].gather(1, k)[:, 0]
    # each edge is handled only by the pixel pairs across it (horizontal pairs for steep edges, vertical for
    # flat ones): counting a diagonal edge in both directions would erode the silhouette
    span = (end - start).detach().abs().gather(1, k[..., None].expand(-1, -1, 2))[:, 0]
    ok &= span[:, fixed] > span[:, along] if axis == 0 else span[:, fixed] >= span[:, along]
    return t.gather(1, k)[:, 0], ok


def _edge(a: torch.Tensor, b: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
    """Edge function of the directed edge a->b at points (px, py): [P,1,2] x [P,K] -> [P,K]."""
    return (b[:, None, 0] - a[:, None, 0]) * (py - a[:, None, 1]) - (b[:, None, 1] - a[:, None, 1]) * (px - a[:, None, 0])


def _cross2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
