"""DMTet refinement stage: a tetrahedral grid with a learnable SDF and deformation, marching tetrahedra,
a hash-grid texture field, rasterised mesh renders and the mesh regularisers.

Sign convention (as DMTet and METHOD.md's init sdf = clamp(density - threshold, -1, 1)): sdf > 0 is inside.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from c123.cameras import Cameras, generate_rays, projection_matrix
from c123.config import DMTetConfig, NerfConfig
from c123.errors import GeometryError
from c123.hashgrid import HashGrid
from c123.rasterizer import get_rasterizer
from c123.volume_render import RenderOutput

_TET_EDGES = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
NEAR, FAR = 0.1, 100.0


def tet_grid(resolution: int, cache_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tetrahedral grid of [-1,1]^3 with `resolution` cells per side, each cube split into 6 tets (Kuhn/Freudenthal).

    The 6 tets of a cell share its main diagonal, so neighbouring cells agree on their shared faces and the
    grid is conforming. Generated once and cached as `<cache_dir>/<resolution>_tets.npz`.
    """
    cache = Path(cache_dir or Path.home() / ".cache" / "c123" / "tets").expanduser()
    path = cache / f"{resolution}_tets.npz"
    if path.exists():
        data = np.load(path)
        return torch.from_numpy(data["verts"]), torch.from_numpy(data["tets"]).long()
    n = resolution + 1
    axis = np.linspace(-1.0, 1.0, n, dtype=np.float32)
    verts = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    origin = np.arange(n ** 3, dtype=np.int32).reshape(n, n, n)[:-1, :-1, :-1].reshape(-1)
    stride = np.array([n * n, n, 1], dtype=np.int32)
    tets = []
    for order in itertools.permutations(range(3)):
        # walk from the cell's lowest corner to its highest one, one axis at a time
        path_ids = np.cumsum([0] + [stride[a] for a in order])
        tets.append(origin[:, None] + path_ids[None].astype(np.int32))
    tets = np.concatenate(tets, 0)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, verts=verts, tets=tets)
    os.replace(tmp, path)  # atomic: concurrent workers never read a half-written file
    return torch.from_numpy(verts), torch.from_numpy(tets).long()


def _triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """For each of the 16 inside/outside codes of a tet: up to 2 triangles as local edge ids, and their count."""
    edge_of = {frozenset(e): i for i, e in enumerate(_TET_EDGES)}
    table = torch.full((16, 6), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for code in range(16):
        inside = [v for v in range(4) if code >> v & 1]
        outside = [v for v in range(4) if not code >> v & 1]
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, :3] = torch.tensor([edge_of[frozenset((lone, o))] for o in others])
            count[code] = 1
        elif len(inside) == 2:
            (a, b), (c, d) = inside, outside
            # the four crossing edges in cyclic order around the quad, split along one diagonal
            quad = [edge_of[frozenset(e)] for e in ((a, c), (a, d), (b, d), (b, c))]
            table[code] = torch.tensor([quad[0], quad[1], quad[2], quad[0], quad[2], quad[3]])
            count[code] = 2
    return table, count


_TABLE, _NUM_TRIANGLES = _triangle_table()


def marching_tets(verts: torch.Tensor, sdf: torch.Tensor, tets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero level set of `sdf` (> 0 inside) on a tet mesh: (mesh_verts[M,3], faces[F,3] long), outward winding.

    Table-driven as DMTet/Kaolin; the vertex positions interpolate along crossing edges, so they are
    differentiable w.r.t. both `verts` and `sdf`.
    """
    device = verts.device
    with torch.no_grad():
        inside = sdf > 0
        occ = inside[tets]
        n_in = occ.sum(1)
        active = (n_in > 0) & (n_in < 4)
        tets, occ = tets[active], occ[active]
        edges = tets[:, torch.tensor(_TET_EDGES, device=device)].sort(-1).values.reshape(-1, 2)
        keys, edge_id = torch.unique(edges[:, 0] * verts.shape[0] + edges[:, 1], return_inverse=True)
        ends = torch.stack([keys // verts.shape[0], keys % verts.shape[0]], -1)
        crossing = inside[ends[:, 0]] != inside[ends[:, 1]]
        new_id = torch.full_like(keys, -1)
        new_id[crossing] = torch.arange(int(crossing.sum()), device=device)
        tet_vert = new_id[edge_id].reshape(-1, 6)                       # output vertex per local edge
        code = (occ.long() << torch.arange(4, device=device)).sum(1)
        table, num = _TABLE.to(device)[code], _NUM_TRIANGLES.to(device)[code]
        one, two = num == 1, num == 2
        faces = torch.cat([tet_vert[one].gather(1, table[one, :3]),
                           tet_vert[two].gather(1, table[two]).reshape(-1, 3)])
        # direction from the inside corners to the outside corners of each face's tet, for the winding
        corner = verts[tets]
        w = occ.to(verts.dtype)[..., None]
        out_dir = (corner * (1 - w)).sum(1) / (1 - w).sum(1) - (corner * w).sum(1) / w.sum(1)
        out_dir = torch.cat([out_dir[one], out_dir[two].repeat_interleave(2, 0)])
        ends = ends[crossing]
    a, b = ends[:, 0], ends[:, 1]
    sa, sb = sdf[a, None], sdf[b, None]
    mesh_verts = (verts[a] * sb - verts[b] * sa) / (sb - sa)
    with torch.no_grad():
        v = mesh_verts[faces]
        normal = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
        flip = (normal * out_dir).sum(-1) < 0
        faces[flip] = faces[flip].flip(1)
    return mesh_verts, faces


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals [V,3]."""
    v = verts[faces]
    face_n = torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0])
    n = torch.zeros_like(verts).index_add(0, faces.reshape(-1), face_n.repeat_interleave(3, 0))
    return F.normalize(n, dim=-1, eps=1e-12)


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


class DMTet(nn.Module):
    """Learnable SDF and deformation on a tet grid, plus a hash-grid texture field (sigmoid albedo)."""

    def __init__(self, cfg: DMTetConfig, nerf_cfg: NerfConfig, bound: float = 1.0):
        super().__init__()
        self.cfg, self.bound = cfg, bound
        verts, tets = tet_grid(cfg.tet_resolution)
        self.register_buffer("grid_verts", verts * bound)
        self.register_buffer("tets", tets)
        self.sdf = nn.Parameter(torch.zeros(verts.shape[0]))
        self.deform = nn.Parameter(torch.zeros(verts.shape[0], 3))
        self.encoder = HashGrid(nerf_cfg.num_levels, nerf_cfg.level_dim, nerf_cfg.log2_hashmap_size,
                                nerf_cfg.base_resolution, nerf_cfg.finest_resolution, bound, nerf_cfg.backend)
        layers, width = [], self.encoder.output_dim
        for _ in range(nerf_cfg.num_layers - 1):
            layers += [nn.Linear(width, nerf_cfg.hidden_dim), nn.ReLU()]
            width = nerf_cfg.hidden_dim
        self.texture_mlp = nn.Sequential(*layers, nn.Linear(width, 3))

    def vertices(self) -> torch.Tensor:
        """Deformed grid vertices: offsets limited to deform_scale grid cells by a tanh."""
        cell = 2.0 * self.bound / self.cfg.tet_resolution
        return self.grid_verts + self.cfg.deform_scale * cell * torch.tanh(self.deform)

    @torch.no_grad()
    def init_from_density(self, density_fn, threshold: float, chunk: int = 1 << 16) -> None:
        """sdf := clamp(density(grid vertex) - threshold, -1, 1), deformation reset to zero."""
        density = torch.cat([density_fn(p).reshape(-1) for p in self.grid_verts.split(chunk)])
        if not torch.isfinite(density).all():
            raise GeometryError("density_fn returned non-finite values at the tet grid: check the NeRF checkpoint")
        self.sdf.copy_((density - threshold).clamp(-1.0, 1.0))
        self.deform.zero_()

    def get_mesh(self) -> Mesh:
        """The current surface (GeometryError if empty)."""
        verts, faces = marching_tets(self.vertices(), self.sdf, self.tets)
        return Mesh(verts, faces)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N,3] in [0,1] at surface points [N,3]."""
        return torch.sigmoid(self.texture_mlp(self.encoder(points)))

    def grid_parameters(self):
        """Hash-grid tables (trained with the x10 grid learning rate)."""
        return list(self.encoder.parameters())

    def other_parameters(self):
        """SDF, deformation and texture MLP."""
        return [self.sdf, self.deform, *self.texture_mlp.parameters()]


def render_mesh(mesh: Mesh, albedo_fn, cams: Cameras, height: int, width: int, *, shading: str = "albedo",
                light_dir: torch.Tensor | None = None, ambient=1.0, bg_color: torch.Tensor | None = None,
                rasterizer=None) -> RenderOutput:
    """Rasterise `mesh` from `cams`: shaded rgb over bg_color, antialiased opacity, ray depth and world normals."""
    device, dtype = mesh.verts.device, mesh.verts.dtype
    cams = cams.to(device=device, dtype=dtype)
    raster = rasterizer or get_rasterizer("auto", device)
    batch = len(cams)
    homo = F.pad(mesh.verts, (0, 1), value=1.0)
    w2c = torch.linalg.inv(cams.c2w)
    clip = homo @ (projection_matrix(cams, NEAR, FAR, width / height) @ w2c).transpose(1, 2)
    # rasteriser row 0 is NDC y = -1; flipping y puts camera +y (image up) in row 0
    clip = clip * clip.new_tensor([1.0, -1.0, 1.0, 1.0])
    faces = mesh.faces.int()
    rast = raster.rasterize(clip, faces, (height, width))
    mask = (rast[..., 3:] > 0).to(dtype)
    pos = raster.interpolate(mesh.verts[None], rast, faces)
    normal = F.normalize(raster.interpolate(mesh.normals[None], rast, faces), dim=-1, eps=1e-12) * mask

    hit = mask[..., 0] > 0
    albedo = torch.zeros_like(pos)
    if hit.any():
        albedo = albedo.index_put((hit,), albedo_fn(pos[hit]).to(dtype))
    origin = cams.position[:, None, None, :]
    if light_dir is None:
        light_dir = cams.position
    light = F.normalize(light_dir.to(device=device, dtype=dtype), dim=-1).reshape(-1, 1, 1, 3)
    amb = torch.as_tensor(ambient, dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    lambert = amb + (1.0 - amb) * (normal * light).sum(-1, keepdim=True).clamp(min=0.0)
    if shading == "albedo":
        color = albedo
    elif shading == "lambertian":
        color = albedo * lambert
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


def _edge_faces(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs of faces sharing an edge (manifold edges only): two [E] index tensors."""
    edges = torch.stack([faces, faces.roll(-1, 1)], -1).sort(-1).values.reshape(-1, 2)
    key = edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1]
    order = key.argsort()
    key, face = key[order], torch.arange(faces.shape[0], device=faces.device).repeat_interleave(3)[order]
    same = key[1:] == key[:-1]
    return face[:-1][same], face[1:][same]


def mesh_normal_consistency(mesh: Mesh) -> torch.Tensor:
    """Mean (1 - cos) between the normals of faces sharing an edge."""
    v = mesh.verts[mesh.faces]
    n = F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), dim=-1, eps=1e-12)
    f0, f1 = _edge_faces(mesh.faces)
    return (1.0 - (n[f0] * n[f1]).sum(-1)).mean()


def mesh_laplacian(mesh: Mesh) -> torch.Tensor:
    """Uniform Laplacian smoothness: mean distance of each vertex from the centroid of its neighbours."""
    n = mesh.verts.shape[0]
    ends = torch.stack([mesh.faces, mesh.faces.roll(-1, 1)], -1).reshape(-1, 2).sort(-1).values
    key = torch.unique(ends[:, 0] * n + ends[:, 1])
    a, b = key // n, key % n
    src, dst = torch.cat([a, b]), torch.cat([b, a])
    total = torch.zeros_like(mesh.verts).index_add(0, src, mesh.verts[dst])
    degree = torch.zeros(mesh.verts.shape[0], device=mesh.verts.device).index_add(
        0, src, torch.ones_like(src, dtype=torch.float32)).clamp(min=1).to(mesh.verts.dtype)
    return (total / degree[:, None] - mesh.verts).norm(dim=-1).mean()
