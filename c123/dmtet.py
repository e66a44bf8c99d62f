"""DMTet refinement stage as the authors' nerf/renderer.py (`init_tet`, `run_dmtet`): an SDF and a deformation on
a tetrahedral grid, marching tetrahedra, rasterised mesh renders and the mesh regularisers. The texture is not
here: renders take an albedo function (the NeRF's colour network, as the official DMTet run).

The grid is the acute A15 lattice that the official grids come from (quartet, tets/generate_tets.py): a grid of
size R has R/4 cubic cells of side 8/R per side of [-1,1]^3, 8 vertices and 46 tetrahedra per cell (the
Delaunay tetrahedra of the A15 points, all dihedral angles between 53 and 79 degrees). Generated here and
cached, never downloaded. Grid vertices and tet indices are constants: plain attributes, outside state_dict.

Sign convention (as DMTet and the official init sdf = clamp(density - threshold, -1, 1)): sdf > 0 is inside.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from c123.atomic import atomic_path
from c123.cameras import Cameras, generate_rays, projection_matrix
from c123.compiling import hot
from c123.config import DMTetConfig
from c123.errors import C123Error, GeometryError
from c123.rasterizer import get_rasterizer
from c123.sync_count import host_values
from c123.volume_render import RenderOutput, indices_of

_TET_EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
NEAR, FAR = 0.1, 100.0
A15_SITES = np.array([(0, 0, 2), (2, 2, 0),                    # the body-centred pair (12 neighbours each)
                      (0, 1, 0), (0, 3, 0), (2, 0, 1), (2, 0, 3), (1, 2, 2), (3, 2, 2)])  # the three chains
"""A15 points in a cubic cell of side 4 grid steps, placed as in the official grids (cube corner at the origin)."""
SDF_EPS = 1e-3
"""marching_tets moves |sdf| below this to +-SDF_EPS, so no surface vertex lands on a grid vertex."""


def a15_cell_tets() -> np.ndarray:
    """The 46 tets of one A15 cell: int[46, 4, 4] rows of (cell offset x, y, z, site), positively oriented.

    They are the Delaunay tetrahedra of the A15 points whose centroid lies in the cell [0,4)^3: the 4-cliques of
    the graph of point pairs at most sqrt(6) apart (the longest A15 edge) whose circumsphere holds no other point.
    """
    offsets = np.array(list(itertools.product((-1, 0, 1), repeat=3)))
    label = np.array([(*o, s) for o in offsets for s in range(len(A15_SITES))])
    points = (label[:, :3] * 4 + A15_SITES[label[:, 3]]).astype(np.float64)
    near = ((points[:, None] - points[None]) ** 2).sum(-1) <= 6.0 + 1e-9
    np.fill_diagonal(near, False)
    tets = []
    for i, j in zip(*np.nonzero(np.triu(near))):
        common = np.nonzero(near[i] & near[j])[0]
        for k, l in itertools.combinations(common[common > j], 2):
            if near[k, l] and _in_cell_and_delaunay(points, (i, j, k, l)):
                tets.append((i, j, k, l))
    corners = points[np.array(tets)]
    volume = np.linalg.det(corners[:, 1:] - corners[:, :1]) / 6
    if len(tets) != 46 or not np.isclose(np.abs(volume).sum(), 64.0):
        raise RuntimeError(f"A15 cell has {len(tets)} tets of volume {np.abs(volume).sum()}: expected 46 filling 64")
    tets = np.array(tets)
    tets[volume < 0] = tets[volume < 0][:, [1, 0, 2, 3]]
    return label[tets]


def _in_cell_and_delaunay(points: np.ndarray, tet: tuple[int, ...]) -> bool:
    corners = points[list(tet)]
    if not ((corners.mean(0) >= 0) & (corners.mean(0) < 4)).all():
        return False
    # circumcentre c: |c - p_i|^2 equal for the 4 corners
    a = 2 * (corners[1:] - corners[0])
    b = (corners[1:] ** 2).sum(1) - (corners[0] ** 2).sum()
    if abs(np.linalg.det(a)) < 1e-9:
        return False
    centre = np.linalg.solve(a, b)
    radius2 = ((corners[0] - centre) ** 2).sum()
    return bool((((points - centre) ** 2).sum(1) >= radius2 - 1e-9).all())


def tet_grid(resolution: int, cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A15 tetrahedral grid of size `resolution` over [-1,1]^3: (verts float32[V,3], tets int32[T,4]).

    The 46 tets of each of the (R/4)^3 cells are kept, so the grid is conforming (neighbouring tets share whole
    faces) and fills a volume of 8 with a saw-tooth boundary about [-1,1]^3 (vertices reach one grid step past
    its low faces); the official quartet grid conforms to the cube instead. Generated once and cached
    as `<cache_dir>/a15_<resolution>.npz` (default ~/.cache/c123/tets).
    """
    if resolution < 4 or resolution % 4:
        raise C123Error(f"dmtet.tet_resolution={resolution} is not a positive multiple of 4: the A15 lattice cell "
                        "is 4 grid steps (use e.g. 64, 128 or 256)")
    cache = Path(cache_dir or Path.home() / ".cache" / "c123" / "tets").expanduser()
    path = cache / f"a15_{resolution}.npz"
    if path.exists():
        data = np.load(path)
        return torch.from_numpy(data["verts"]), torch.from_numpy(data["tets"])
    cells = resolution // 4
    # lattice point ids over cells -1..cells (tets reach one cell out): ((x * m + y) * m + z) * 8 + site, with
    # cell coordinates shifted by +1; a tet corner's id is its cell's base id plus the template's offset
    m = cells + 2
    axis = np.arange(1, cells + 1, dtype=np.int32)
    base = ((axis[:, None, None] * m + axis[None, :, None]) * m + axis[None, None, :]).reshape(-1, 1, 1) * 8
    template = a15_cell_tets()                                                  # [46,4,4]
    offset = ((template[..., 0] * m + template[..., 1]) * m + template[..., 2]) * 8 + template[..., 3]
    ids = (base + offset.astype(np.int32)[None]).reshape(-1, 4)                  # [cells^3 * 46, 4]
    used = np.zeros(m ** 3 * 8, dtype=bool)
    used[ids.reshape(-1)] = True
    tets = (np.cumsum(used) - 1).astype(np.int32)[ids]
    lattice = np.nonzero(used)[0]
    site, cell_id = lattice % 8, lattice // 8
    cell_xyz = np.stack([cell_id // (m * m), cell_id // m % m, cell_id % m], -1) - 1
    verts = ((cell_xyz * 4 + A15_SITES[site]) * (2.0 / resolution) - 1.0).astype(np.float32)
    with atomic_path(path) as tmp:  # concurrent workers never read a half-written file
        np.savez(tmp, verts=verts, tets=tets)
    return torch.from_numpy(verts), torch.from_numpy(tets)


def _triangle_table() -> torch.Tensor:
    """For each of the 16 inside/outside codes of a tet: up to 2 triangles as local edge ids (1 triangle for 1 or
    3 corners inside, 2 for 2, none otherwise)."""
    edge_of = {frozenset(e): i for i, e in enumerate(_TET_EDGES)}
    table = torch.full((16, 6), -1, dtype=torch.long)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, :3] = torch.tensor([edge_of[frozenset((lone, o))] for o in others])
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # the four crossing edges in cyclic order around the quad, split along one diagonal
            quad = [edge_of[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]
            table[code] = torch.tensor([quad[0], quad[1], quad[2], quad[0], quad[2], quad[3]])
    return table


_TABLE = _triangle_table()


def tet_edges(tets: torch.Tensor, num_verts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct edges of a tet mesh: (ends [E,2] long, ascending by (low, high) vertex id; per tet the edge
    id of each local edge in _TET_EDGES order [T,6] long). Constant for a grid: found once, not per step."""
    pairs = tets.long()[:, torch.tensor(_TET_EDGES, device=tets.device)].sort(-1).values.reshape(-1, 2)
    keys, edge_id = torch.unique(pairs[:, 0] * num_verts + pairs[:, 1], return_inverse=True)
    return torch.stack([keys // num_verts, keys % num_verts], -1), edge_id.reshape(-1, 6)


@hot
def marching_tets(verts: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor,
                  edges: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero level set of `sdf` (> 0 inside) on a tet mesh: (mesh_verts[M,3], faces[F,3] long), outward winding.

    Table-driven as DMTet/Kaolin; the vertex positions interpolate along crossing edges, so they are
    differentiable w.r.t. both `verts` and `sdf`. An sdf of magnitude below SDF_EPS (exact zeros included,
    which count as outside) is moved to +-SDF_EPS first, with the gradient passed straight through: otherwise
    the surface vertices of all edges at such a grid vertex coincide and make zero-area triangles.

    edges: `tet_edges(tets, len(verts))` when known (a DMTet keeps them); then the extraction reads the mesh size
    from the device once (one host sync) and every other shape follows from it. Mesh vertices are ordered by
    their edge (low, high) ids; faces list the one-triangle tets' faces, then the two-triangle tets' pairs, each
    in tet order.
    """
    nudged = torch.where(sdf > 0, sdf.clamp(min=SDF_EPS), sdf.clamp(max=-SDF_EPS))
    sdf = sdf + (nudged - sdf).detach()
    ends, tet_edge = tet_edges(tets, verts.shape[0]) if edges is None else edges
    with torch.no_grad():
        cut = _cut_tets(sdf > 0, tets, ends)
        n_one, n_two, n_verts = host_values(cut.counts)  # the extraction's one host sync: the mesh's size
        faces, out_dir, crossing = _surface_topology(cut, n_one, n_two, n_verts, tets, ends, tet_edge, verts)
    a, b = crossing[:, 0], crossing[:, 1]
    sa, sb = sdf[a, None], sdf[b, None]
    mesh_verts = (verts[a] * sb - verts[b] * sa) / (sb - sa)
    with torch.no_grad():
        v = mesh_verts[faces]
        normal = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        flip = (normal * out_dir).sum(-1) < 0
        faces = torch.where(flip[:, None], faces.flip(1), faces)
    return mesh_verts, faces


@dataclass
class TetCut:
    """Which tets and edges the zero level set cuts."""

    occ: torch.Tensor
    """bool [T,4]: which corners are inside."""
    one: torch.Tensor
    """bool [T]: tets the surface cuts with one triangle (1 or 3 corners inside)."""
    two: torch.Tensor
    """bool [T]: tets it cuts with two (2 corners inside)."""
    crossing: torch.Tensor
    """bool [E]: edges with one end inside."""
    counts: torch.Tensor
    """[3]: tets with one triangle, tets with two, crossing edges (= mesh vertices)."""


def _cut_tets(inside: torch.Tensor, tets: torch.Tensor, ends: torch.Tensor) -> TetCut:
    # index_select and count_nonzero, not inside[tets] and .sum(): on CPU the advanced index converts the int32
    # tets to int64 first and the sum widens the bools, 8x and 20x slower over 12M tets at the paper's grid.
    # The triangle count follows from how many corners are inside, counted in bytes: the passes over all tets
    # stay one byte wide (an int64 code and a table lookup per tet were most of the cut's time); the codes are
    # computed for the cut tets only.
    occ = inside.index_select(0, tets.reshape(-1)).view(-1, 4)
    bits = occ.view(torch.uint8)
    corners = bits[:, 0] + bits[:, 1] + bits[:, 2] + bits[:, 3]
    one, two = (corners & 1).view(torch.bool), corners == 2
    crossing = inside.index_select(0, ends[:, 0]) != inside.index_select(0, ends[:, 1])
    counts = torch.stack([torch.count_nonzero(one), torch.count_nonzero(two), torch.count_nonzero(crossing)])
    return TetCut(occ, one, two, crossing, counts)


def _codes(occ: torch.Tensor) -> torch.Tensor:
    """The inside/outside code (bit k: corner k inside) of tets with corners occ [N,4] bool, as long."""
    return (occ.long() << torch.arange(4, device=occ.device)).sum(1)


def _surface_topology(cut: TetCut, n_one: int, n_two: int, n_verts: int, tets: torch.Tensor, ends: torch.Tensor,
                      tet_edge: torch.Tensor, verts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(faces [F,3] as mesh-vertex ids (ranks among the crossing edges), each face's inside-to-outside direction
    [F,3], crossing edges [M,2] (ends of each mesh vertex's edge))."""
    table = _TABLE.to(verts.device)
    one, two = indices_of(cut.one, n_one), indices_of(cut.two, n_two)
    face_edges = torch.cat([tet_edge[one].gather(1, table[_codes(cut.occ[one]), :3]),
                            tet_edge[two].gather(1, table[_codes(cut.occ[two])]).reshape(-1, 3)])
    crossing = indices_of(cut.crossing, n_verts)
    # each face's crossing edges as output vertices (their rank among the crossing edges): a search over the
    # mesh's vertices, not a cumsum over all edges
    faces = torch.searchsorted(crossing, face_edges)
    # direction from the inside corners to the outside corners of each face's tet, for the winding
    face_tet = torch.cat([one, two.repeat_interleave(2)])
    corner = verts[tets[face_tet].long()]
    w = cut.occ[face_tet].to(verts.dtype)[..., None]
    out_dir = (corner * (1 - w)).sum(1) / (1 - w).sum(1) - (corner * w).sum(1) / w.sum(1)
    return faces, out_dir, ends[crossing]


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Unit vertex normals [V,3]: the normalised sum of the unit normals of the faces around each vertex, +z where
    they cancel (run_dmtet's vn)."""
    v = verts[faces]
    face_n = F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1, eps=1e-10)
    n = torch.zeros_like(verts).index_add(0, faces.reshape(-1), face_n.repeat_interleave(3, 0))
    n = torch.where((n * n).sum(-1, keepdim=True) > 1e-20, n, n.new_tensor([0.0, 0.0, 1.0]))
    return F.normalize(n, dim=-1)


@dataclass
class Mesh:
    """A triangle mesh with unit vertex normals (computed when not given); GeometryError when it has no faces."""

    verts: torch.Tensor
    faces: torch.Tensor
    normals: torch.Tensor | None = None

    def __post_init__(self):
        if self.faces.shape[0] == 0 or self.verts.shape[0] == 0:
            raise GeometryError("the mesh is empty (no surface crosses the level set): lower the density "
                                "threshold or check that the field has an object inside the bound")
        self.faces = self.faces.long()
        if self.normals is None:
            self.normals = vertex_normals(self.verts, self.faces)


@torch.no_grad()
def mean_density(density_fn, bound: float, resolution: int = 128, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, chunk: int = 1 << 16) -> float:
    """Mean density over a resolution^3 grid of cell-jittered probes of [-bound, bound]^3.

    One update of the official cuda_ray density grid (renderer.py `update_extra_state`: points
    2 i / (G - 1) - 1 scaled by bound - bound / G, jittered by up to bound / G), whose mean is `mean_density`.
    The official grid keeps the maximum over its updates (every 16 steps, decayed by 0.95 each); this probes the
    final field once, so a field still changing at the end reads lower here. Pass `device`: the field's device.
    """
    half = bound / resolution
    axis = torch.arange(resolution, dtype=torch.float32, device=device) * (2.0 / (resolution - 1)) - 1.0
    total, count = 0.0, 0
    for xs in axis.split(max(1, chunk // resolution ** 2)):
        grid = torch.stack(torch.meshgrid(xs, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        gen_device = generator.device if generator is not None else grid.device
        jitter = torch.rand(grid.shape, generator=generator, device=gen_device).to(grid.device) * 2 - 1
        sigma = density_fn(grid * (bound - half) + jitter * half).float()
        total, count = total + float(sigma.sum()), count + sigma.numel()
    if not math.isfinite(total):
        raise GeometryError("the NeRF density has non-finite values: the checkpoint is corrupt or training diverged")
    return total / count


def init_threshold(density_fn, bound: float, cfg: DMTetConfig, generator: torch.Generator | None = None,
                   device: torch.device | str | None = None) -> float:
    """The DMTet init threshold: min(mean density, cap) as init_tet with cuda_ray (density_thresh = 10)."""
    return min(mean_density(density_fn, bound, cfg.mean_density_resolution, generator, device),
               cfg.init_density_threshold)


class DMTet(nn.Module):
    """Learnable SDF and deformation on the A15 tet grid rescaled to the object's box; state: sdf, deform, tet_scale."""

    def __init__(self, cfg: DMTetConfig, cache_dir: str | os.PathLike | None = None):
        super().__init__()
        self.cfg = cfg
        # constants regenerated from the cache, outside state_dict and any average; moved to sdf's device on use
        self.grid_verts, self.tets = tet_grid(cfg.tet_resolution, cache_dir)
        self.register_buffer("tet_scale", torch.ones(3))
        self.sdf = nn.Parameter(torch.zeros(self.grid_verts.shape[0]))
        self.deform = nn.Parameter(torch.zeros(self.grid_verts.shape[0], 3))

    def _grid(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.grid_verts.device != self.sdf.device:
            self.grid_verts, self.tets = self.grid_verts.to(self.sdf.device), self.tets.to(self.sdf.device)
            self._edges = None
        return self.grid_verts, self.tets

    def edges(self) -> tuple[torch.Tensor, torch.Tensor]:
        """tet_edges of the grid, found on first use on the grid's device and kept (a constant, not state)."""
        grid, tets = self._grid()
        if getattr(self, "_edges", None) is None:
            self._edges = tet_edges(tets, grid.shape[0])
        return self._edges

    def vertices(self) -> torch.Tensor:
        """Deformed grid vertices: scaled grid + deform_scale * tanh(deform) / tet_resolution."""
        grid, _ = self._grid()
        return grid * self.tet_scale + self.cfg.deform_scale * torch.tanh(self.deform) / self.cfg.tet_resolution

    @torch.no_grad()
    def init_from_density(self, density_fn, threshold: float, chunk: int = 1 << 16) -> None:
        """init_tet: scale the grid to the box of vertices with density > threshold (+ scale_margin per axis),
        then sdf := clamp(density(scaled vertex) - threshold, -1, 1); deformation reset to zero."""
        grid, _ = self._grid()

        def density_at(points):
            density = torch.cat([density_fn(p).reshape(-1) for p in points.split(chunk)])
            if not torch.isfinite(density).all():
                raise GeometryError("density_fn returned non-finite values at the tet grid: check the NeRF checkpoint")
            return density

        occupied = density_at(grid) > threshold
        if not occupied.any():
            raise GeometryError(f"no tet grid vertex has density above {threshold:.3g}: the NeRF is empty; "
                                "check its training or lower dmtet.init_density_threshold")
        self.tet_scale.copy_(grid[occupied].abs().amax(0) + self.cfg.scale_margin)
        self.sdf.copy_((density_at(grid * self.tet_scale) - threshold).clamp(-1.0, 1.0))
        self.deform.zero_()

    def get_mesh(self) -> Mesh:
        """The current surface (GeometryError if empty)."""
        _, tets = self._grid()
        verts, faces = marching_tets(self.vertices(), self.sdf, tets, self.edges())
        return Mesh(verts, faces)


def render_mesh(mesh: Mesh, albedo_fn, cams: Cameras, height: int, width: int, *, shading: str = "albedo",
                light_dir: torch.Tensor | None = None, ambient=1.0, bg_color: torch.Tensor | None = None,
                rasterizer=None, textureless: torch.Tensor | None = None) -> RenderOutput:
    """Rasterise `mesh` from `cams`: shaded rgb over bg_color, antialiased opacity, ray depth and world normals.

    textureless: a bool 0-dim tensor that turns 'lambertian' into 'textureless' on the device (no host read)."""
    device, dtype = mesh.verts.device, mesh.verts.dtype
    cams = cams.to(device=device, dtype=dtype)
    raster = rasterizer or get_rasterizer("auto", device)
    batch = len(cams)
    homo = F.pad(mesh.verts, (0, 1), value=1.0)
    w2c = torch.linalg.inv_ex(cams.c2w).inverse  # camera frames are invertible: no check (a host sync)
    clip = homo @ (projection_matrix(cams, NEAR, FAR, width / height) @ w2c).transpose(1, 2)
    # rasteriser row 0 is NDC y = -1; flipping y puts camera +y (image up) in row 0
    clip = clip * clip.new_tensor([1.0, -1.0, 1.0, 1.0])
    faces = mesh.faces.int()
    rast = raster.rasterize(clip, faces, (height, width))
    mask = (rast[..., 3:] > 0).to(dtype)
    pos = raster.interpolate(mesh.verts[None], rast, faces)
    normal = F.normalize(raster.interpolate(mesh.normals[None], rast, faces), dim=-1, eps=1e-12) * mask

    # the texture is looked up only where the mesh is: the render's one host sync reads how many pixels that is
    hit = (mask[..., 0] > 0).reshape(-1).nonzero().squeeze(1)
    albedo = torch.zeros_like(pos).reshape(-1, 3)
    if hit.numel():
        albedo = albedo.index_put((hit,), albedo_fn(pos.reshape(-1, 3).index_select(0, hit)).to(dtype))
    albedo = albedo.reshape(pos.shape)
    origin = cams.position[:, None, None, :]
    if light_dir is None:
        light_dir = cams.position
    light = F.normalize(light_dir.to(device=device, dtype=dtype), dim=-1).reshape(-1, 1, 1, 3)
    amb = torch.as_tensor(ambient, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    lambert = amb + (1.0 - amb) * (normal * light).sum(-1, keepdim=True).clamp(min=0.0)
    if shading == "albedo":
        color = albedo
    elif shading == "lambertian":
        color = albedo * lambert if textureless is None else lambert * torch.where(textureless, 1.0, albedo)
    elif shading == "textureless":
        color = lambert.expand_as(albedo)
    elif shading == "normal":
        color = (normal + 1.0) * 0.5
    else:
        raise ValueError(f"unknown shading '{shading}': use albedo, lambertian, textureless or normal")
    bg = torch.ones(3, dtype=dtype, device=device) if bg_color is None else bg_color.to(device=device, dtype=dtype)
    bg = bg if bg.dim() == 4 else bg.reshape(-1, 1, 1, 3)  # per pixel [B,H,W,3] or per camera
    rgb = color * mask + bg * (1.0 - mask)
    smooth = raster.antialias(torch.cat([rgb, mask, normal], -1), rast, clip, faces)
    depth = (pos - origin).norm(dim=-1, keepdim=True) * mask
    _, rays_d = generate_rays(cams, height, width)
    return RenderOutput(rgb=smooth[..., :3], opacity=smooth[..., 3:4], depth=depth, normal=smooth[..., 4:7],
                        weights=None, sample_normals=None, rays_d=rays_d.reshape(batch * height * width, 3))


def _sorted_edges(faces: torch.Tensor, num_verts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every face's 3 edges as keys low * V + high, sorted: (keys [3F], the position in faces.reshape(-1) of
    each, i.e. face * 3 + corner)."""
    ends = torch.stack([faces, faces.roll(-1, 1)], -1).sort(-1).values.reshape(-1, 2)
    return torch.sort(ends[:, 0] * num_verts + ends[:, 1])


def mesh_normal_consistency(mesh: Mesh) -> torch.Tensor:
    """Mean of 1 - cos between the unit normals of faces sharing an edge (renderer.py `normal_consistency`).

    On the closed meshes marching tets makes, every edge pairs its two faces as the official edge-to-face map
    does; an open edge is skipped (the official pairs it with face 0). Sorted edge keys pair the faces: the
    pairs are masked, not gathered, so the loss needs no host sync.
    """
    v = mesh.verts[mesh.faces]
    n = F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1, eps=1e-10)
    key, where = _sorted_edges(mesh.faces, mesh.verts.shape[0])
    face = where // 3
    same = key[1:] == key[:-1]
    cos = (n[face[:-1]] * n[face[1:]]).sum(-1).clamp(-1.0, 1.0)
    return torch.where(same, 1.0 - cos, 0.0).sum() / same.sum().clamp(min=1)


def mesh_laplacian(mesh: Mesh) -> torch.Tensor:
    """Uniform Laplacian loss mean_i |(D - A) v|_i = |deg_i v_i - sum of neighbours| (renderer.py
    `laplacian_smooth_loss` with `laplacian_uniform`): deg_i times the distance from the neighbours' centroid.

    Each distinct edge counts once: the first of its sorted keys carries weight 1, repeats 0 (no host sync)."""
    n = mesh.verts.shape[0]
    key, _ = _sorted_edges(mesh.faces, n)
    first = torch.cat([key.new_ones(1, dtype=torch.bool), key[1:] != key[:-1]]).to(mesh.verts.dtype)
    a, b = key // n, key % n
    src, dst, weight = torch.cat([a, b]), torch.cat([b, a]), torch.cat([first, first])
    neighbours = torch.zeros_like(mesh.verts).index_add(0, src, mesh.verts[dst] * weight[:, None])
    degree = torch.zeros(n, device=mesh.verts.device, dtype=mesh.verts.dtype).index_add(0, src, weight)
    return (degree[:, None] * mesh.verts - neighbours).norm(dim=-1).mean()
