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

from dataclasses import dataclass

import torch

from c123.compiling import hot
from c123.errors import C123Error
from c123.sync_count import host_values, host_waits

_PIXELS_PER_CHUNK = 1 << 22  # pixel tests per chunk of (triangle, tile) pairs: bounds peak memory to ~0.5 GB
TILES = (2, 4, 8, 16)
"""Square tile sizes (pixels) the triangles are binned into: the power of two nearest their median extent."""


@hot
def rasterize(clip_pos: torch.Tensor, faces: torch.Tensor, resolution) -> torch.Tensor:
    """rast[B,H,W,4] = (u, v, z/w, triangle_id + 1), differentiable w.r.t. clip_pos where covered.

    The one host sync reads which tile size the triangles are binned with and how many (triangle, tile) pairs
    that makes; every other shape follows from the inputs."""
    height, width = resolution
    faces = faces.long()
    with torch.no_grad():
        bins = _bin_triangles(clip_pos.detach(), faces, height, width)
        which, total = host_values(bins.read)
        tri = _nearest_triangles(bins, TILES[which], total, faces.shape[0], height, width)
    return _barycentrics(clip_pos, faces, tri, height, width)


@hot
def interpolate(attr: torch.Tensor, rast: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Per-pixel attributes [B,H,W,C] from per-vertex ones [B or 1,V,C] (or [V,C]); zero where empty.

    Every pixel or only the covered ones, as `_computed_pixels` decides."""
    if attr.dim() == 2:
        attr = attr[None]
    batch, height, width = rast.shape[:3]
    tri_all = rast[..., 3].detach().long().reshape(-1) - 1
    pix, masked = _computed_pixels(tri_all)
    tri = tri_all if masked else tri_all[pix]
    b = pix // (height * width)
    corners = faces.long()[tri.clamp(min=0)]                            # [N,3]
    a = attr[(b if attr.shape[0] > 1 else torch.zeros_like(b))[:, None], corners]  # [N,3,C]
    uv = rast.reshape(-1, 4)[:, :2] if masked else rast.reshape(-1, 4)[pix, :2]
    bary = torch.cat([uv, 1.0 - uv.sum(-1, keepdim=True)], -1)
    values = (bary[..., None] * a).sum(1)
    return _every_pixel(values, tri_all, pix, masked).reshape(batch, height, width, -1)


@hot
def antialias(color: torch.Tensor, rast: torch.Tensor, clip_pos: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Analytic silhouette antialiasing of color[B,H,W,C] (nvdiffrast's method), differentiable w.r.t. clip_pos.

    Where reading a shape makes the host wait (CUDA: `host_waits`), every pair of neighbouring pixels is examined
    and the pairs that show no silhouette edge add zero (masked, not gathered: no host sync); elsewhere only the
    pairs whose triangles differ are gathered first (several times faster on CPU, the same image)."""
    batch, height, width, channels = color.shape
    masked = host_waits(color.device)
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
        if not masked:
            a = a[tri[a] != tri[a + step]]
        b = a + step
        differ = tri[a] != tri[b]
        # the occluder is the pixel whose triangle is present and nearer
        a_front = (tri[b] < 0) | ((tri[a] >= 0) & (z[a] <= z[b]))
        p, q = torch.where(a_front, a, b), torch.where(a_front, b, a)
        t, ok = _edge_crossing(screen, faces, silhouette, tri[p].clamp(min=0), p, q, height, width, axis)
        ok = (ok & differ)[:, None]
        t = t[:, None]
        diff = flat[q] - flat[p]
        out = out.index_add(0, p, torch.where(ok, (0.5 - t).clamp(min=0) * diff, 0.0))  # edge in p's pixel
        out = out.index_add(0, q, torch.where(ok, (0.5 - t).clamp(max=0) * diff, 0.0))  # edge in q's pixel
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
                        "see the README's GPU servers paragraph for its one-line install (or set dmtet.backend=torch)")
    return TorchRasterizer()


def _screen(clip_pos: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Clip coordinates -> pixel coordinates (x = column, y = row, pixel centres at integers)."""
    ndc = clip_pos[..., :2] / clip_pos[..., 3:4]
    scale = ndc.new_tensor([width, height])
    return (ndc + 1.0) * 0.5 * scale - 0.5


@dataclass
class TriangleBins:
    """Triangles in screen space and their bounding boxes, binned into square tiles of each size in TILES."""

    screen: torch.Tensor
    """Pixel coordinates of the corners [B*F,3,2]."""
    zw: torch.Tensor
    """z/w of the corners [B*F,3]."""
    lo: torch.Tensor
    """Lowest covered pixel (column, row) [B*F,2] (clipped to the image)."""
    hi: torch.Tensor
    """Highest covered pixel [B*F,2]."""
    counts: torch.Tensor
    """Tiles each triangle touches, per tile size [len(TILES), B*F] (0 for dropped triangles)."""
    read: torch.Tensor
    """[index in TILES of the tile size nearest the median triangle extent, the pairs it makes]."""


def _bin_triangles(clip_pos: torch.Tensor, faces: torch.Tensor, height: int, width: int) -> TriangleBins:
    screen = _screen(clip_pos, height, width)[:, faces]                 # [B,F,3,2]
    zw = (clip_pos[..., 2] / clip_pos[..., 3])[:, faces]                # [B,F,3]
    w = clip_pos[..., 3][:, faces]
    lo = screen.amin(2).ceil()
    hi = screen.amax(2).floor()
    lo = torch.maximum(lo, lo.new_zeros(2))
    hi = torch.minimum(hi, hi.new_tensor([width - 1, height - 1]))
    area = _cross2(screen[..., 1, :] - screen[..., 0, :], screen[..., 2, :] - screen[..., 0, :])
    # triangles crossing the camera plane are dropped rather than clipped (objects stay in front of the camera)
    keep = ((w > 0).all(-1) & (lo <= hi).all(-1) & (area.abs() > 1e-12)).reshape(-1)
    lo, hi = lo.reshape(-1, 2).long(), hi.reshape(-1, 2).long()
    extent = torch.where(keep, (hi - lo + 1).amax(1).float(), float("nan")).nanmedian().nan_to_num(1.0)
    pick = torch.log2(extent.clamp(min=1.0)).round().clamp(1, len(TILES)).long().reshape(1) - 1
    counts = torch.stack([torch.where(keep, ((hi // t - lo // t + 1).clamp(min=0)).prod(1), 0) for t in TILES])
    read = torch.cat([pick, counts.sum(1).index_select(0, pick)])
    return TriangleBins(screen.reshape(-1, 3, 2), zw.reshape(-1, 3), lo, hi, counts, read)


def _nearest_triangles(bins: TriangleBins, tile: int, total: int, num_faces: int, height: int,
                       width: int) -> torch.Tensor:
    """Index of the nearest triangle covering each pixel centre, -1 where none: [B*H*W] long.

    Every (triangle, tile) pair is tested over its tile's pixels with masks rather than gathered (no host sync)."""
    device = bins.screen.device
    num_pixels = bins.screen.shape[0] // num_faces * height * width
    empty = torch.iinfo(torch.int64).max
    best = torch.full((num_pixels,), empty, dtype=torch.long, device=device)
    if total:
        n_tiles = bins.counts[TILES.index(tile)]
        t_lo = bins.lo // tile
        t_count = (bins.hi // tile - t_lo + 1).clamp(min=1)
        pair_bf = torch.repeat_interleave(torch.arange(n_tiles.numel(), device=device), n_tiles, output_size=total)
        start = torch.repeat_interleave(n_tiles.cumsum(0) - n_tiles, n_tiles, output_size=total)
        local = torch.arange(total, device=device) - start
        tx = t_lo[pair_bf, 0] + local % t_count[pair_bf, 0]
        ty = t_lo[pair_bf, 1] + local // t_count[pair_bf, 0]
        offs = torch.arange(tile, device=device)
        oy, ox = torch.meshgrid(offs, offs, indexing="ij")
        ox, oy = ox.reshape(1, -1), oy.reshape(1, -1)
        chunk = max(1, _PIXELS_PER_CHUNK // (tile * tile))
        for first in range(0, total, chunk):
            sl = slice(first, first + chunk)
            _splat(best, pair_bf[sl], tx[sl], ty[sl], ox, oy, tile, bins.screen, bins.zw, num_faces, height, width)
    return torch.where(best != empty, best & 0xFFFFFFFF, -1)


@hot
def _splat(best, g, tx, ty, ox, oy, tile: int, s_flat, z_flat, num_faces: int, height: int, width: int) -> None:
    """z-buffer the pixels of (triangle g, tile (tx, ty)) pairs into `best` (a scatter-min of 64-bit keys
    (depth bits, face id)); pixel tests outside the triangle write the empty key."""
    px = (tx[:, None] * tile + ox).to(s_flat.dtype)
    py = (ty[:, None] * tile + oy).to(s_flat.dtype)
    v = s_flat[g]                                                       # [P,3,2]
    e0 = _edge(v[:, 1], v[:, 2], px, py)
    e1 = _edge(v[:, 2], v[:, 0], px, py)
    e2 = _edge(v[:, 0], v[:, 1], px, py)
    area_g = (e0 + e1 + e2)
    inside = ((e0 >= 0) & (e1 >= 0) & (e2 >= 0)) | ((e0 <= 0) & (e1 <= 0) & (e2 <= 0))
    inside &= (px < width) & (py < height)
    zg = z_flat[g]
    depth = (e0 * zg[:, :1] + e1 * zg[:, 1:2] + e2 * zg[:, 2:]) / area_g
    inside &= (depth >= -1) & (depth <= 1)
    b = g // num_faces
    pix = b[:, None] * height * width + py.long().clamp(max=height - 1) * width + px.long().clamp(max=width - 1)
    # non-negative float32 bit patterns order like the floats: (depth bits, face id) sorts nearest-first
    bits = ((depth.clamp(-1, 1) + 1.0) * 0.5).float().contiguous().view(torch.int32).long()
    key = torch.where(inside, (bits << 32) | (g % num_faces)[:, None], torch.iinfo(torch.int64).max)
    best.scatter_reduce_(0, pix.reshape(-1), key.reshape(-1), reduce="amin")


def _barycentrics(clip_pos: torch.Tensor, faces: torch.Tensor, tri: torch.Tensor, height: int, width: int):
    """rast from the winning triangle per pixel, recomputed differentiably from clip_pos (every pixel or only the
    covered ones, as `_computed_pixels` decides: the same values)."""
    batch = clip_pos.shape[0]
    height_width = height * width
    pix, masked = _computed_pixels(tri)
    tri_all, tri = tri, (tri if masked else tri[pix])
    covered = tri >= 0
    b = pix // height_width
    v = clip_pos[b[:, None], faces[tri.clamp(min=0)]]                   # [N,3,4]
    # the stand-in triangle of an empty pixel may be degenerate there: keep its arithmetic finite
    w = torch.where(covered[:, None], v[..., 3], 1.0)
    ndc = v[..., :2] / w[..., None]
    rem = pix % height_width
    centre = torch.stack([(2 * (rem % width) + 1).to(v.dtype) / width - 1,
                          (2 * (rem // width) + 1).to(v.dtype) / height - 1], -1)
    e0 = _cross2(ndc[:, 2] - ndc[:, 1], centre - ndc[:, 1])
    e1 = _cross2(ndc[:, 0] - ndc[:, 2], centre - ndc[:, 2])
    e2 = _cross2(ndc[:, 1] - ndc[:, 0], centre - ndc[:, 0])
    screen_bary = torch.stack([e0, e1, e2], -1)
    total = screen_bary.sum(-1, keepdim=True)
    screen_bary = screen_bary / torch.where(covered[:, None] & (total != 0), total, 1.0)
    persp = screen_bary / w
    norm = persp.sum(-1, keepdim=True)
    bary = persp / torch.where(covered[:, None] & (norm != 0), norm, 1.0)
    zw = (screen_bary * v[..., 2] / w).sum(-1)
    values = torch.stack([bary[:, 0], bary[:, 1], zw, (tri + 1).to(v.dtype)], -1)
    return _every_pixel(values, tri_all, pix, masked).reshape(batch, height, width, 4)


def _computed_pixels(tri: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(indices of the pixels to compute, masked) for per-pixel triangle ids `tri` [N] (-1: empty): every pixel
    where reading a shape makes the host wait (`host_waits`; an empty one is computed with a stand-in triangle
    and zeroed: no host sync), else only the covered ones (several times less work)."""
    if host_waits(tri.device):
        return torch.arange(tri.numel(), device=tri.device), True
    return (tri >= 0).nonzero().squeeze(1), False


def _every_pixel(values: torch.Tensor, tri: torch.Tensor, pix: torch.Tensor, masked: bool) -> torch.Tensor:
    """The computed pixels' values [len(pix),C] placed over all pixels [N,C], zero where `tri` is empty."""
    if masked:
        return torch.where((tri >= 0)[:, None], values, 0.0)
    return values.new_zeros(tri.numel(), values.shape[-1]).index_copy(0, pix, values)


def _silhouette_edges(screen: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[B,F,3] bool: edge k = (f[k], f[k+1]) is open, non-manifold, or between a front- and a back-facing face.

    Edges are numbered by sorting their keys (ids up to 3F: buffers sized for every half-edge being distinct, so
    no host sync reads how many edges there are)."""
    batch, num_verts = screen.shape[:2]
    ends = torch.stack([faces, faces.roll(-1, 1)], -1).sort(-1).values.reshape(-1, 2)
    key, order = torch.sort(ends[:, 0] * num_verts + ends[:, 1])
    first = torch.cat([key.new_ones(1, dtype=torch.bool), key[1:] != key[:-1]])
    edge_id = torch.empty_like(order).scatter_(0, order, torch.cumsum(first, 0) - 1)
    counts = torch.zeros_like(edge_id).index_add(0, edge_id, torch.ones_like(edge_id))
    v = screen[:, faces]
    front = (_cross2(v[:, :, 1] - v[:, :, 0], v[:, :, 2] - v[:, :, 0]) > 0).long()
    front = front[:, :, None].expand(-1, -1, 3).reshape(batch, -1)
    index = edge_id.expand(batch, -1)
    lo = front.new_ones(batch, edge_id.numel()).scatter_reduce(1, index, front, reduce="amin")
    hi = front.new_zeros(batch, edge_id.numel()).scatter_reduce(1, index, front, reduce="amax")
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
