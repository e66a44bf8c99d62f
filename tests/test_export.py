"""Export: marching cubes of a NeRF, textured OBJ/GLB that reload with trimesh, videos, empty-mesh errors."""

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from c123.config import DMTetConfig, NerfConfig
from c123.dmtet import DMTet
from c123.errors import GeometryError
from c123.export import export_textured_mesh, mesh_from_nerf, write_video
from c123.nerf import NeRFField


def albedo(points: torch.Tensor) -> torch.Tensor:
    return (points + 1.0) * 0.5


def test_textured_mesh_reloads_with_texture(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=3)
    paths = export_textured_mesh(torch.tensor(sphere.vertices, dtype=torch.float32), torch.tensor(sphere.faces),
                                 albedo, tmp_path, texture_size=128)
    assert set(paths) == {"obj", "mtl", "png", "glb"}
    obj = trimesh.load(paths["obj"], process=False)
    (glb,) = trimesh.load(paths["glb"]).geometry.values()
    for mesh, image in ((obj, obj.visual.material.image), (glb, glb.visual.material.baseColorTexture)):
        assert len(mesh.faces) == len(sphere.faces)
        assert len(mesh.vertices) >= len(sphere.vertices)   # xatlas splits vertices along seams only
        assert len(mesh.vertices) == len(mesh.visual.uv)
        assert image.size == (128, 128)
    # the baked texture at each face centre holds the albedo of that surface point
    texture = np.asarray(obj.visual.material.image.convert("RGB"), dtype=np.float64) / 255
    uv = obj.visual.uv[obj.faces].mean(1)
    texel = texture[((1 - uv[:, 1]) * 128).astype(int).clip(0, 127), (uv[:, 0] * 128).astype(int).clip(0, 127)]
    expected = albedo(torch.tensor(obj.vertices[obj.faces].mean(1))).numpy()
    assert np.abs(texel - expected).mean() < 0.02


def degenerate_faces(mesh: trimesh.Trimesh) -> int:
    """Faces with a repeated vertex index or zero area (what the glTF validator reports)."""
    f, v = mesh.faces, np.asarray(mesh.vertices, dtype=np.float64)
    area = np.linalg.norm(np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]), axis=1)
    repeated = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    return int((repeated | (area == 0)).sum())


def faces_per_edge(mesh: trimesh.Trimesh) -> np.ndarray:
    """How many faces share each edge once vertices at the same position are welded (UV seams split them)."""
    _, weld = np.unique(np.asarray(mesh.vertices), axis=0, return_inverse=True)
    f = weld.reshape(-1)[mesh.faces]
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def test_exported_dmtet_sphere_reloads_without_degenerate_faces_or_non_manifold_edges(tmp_path):
    model = DMTet(DMTetConfig(tet_resolution=64), cache_dir=tmp_path / "tets")
    model.init_from_density(lambda x: 10.0 + 10.0 * (0.6 - x.norm(dim=-1)), threshold=10.0)
    # then a sphere through grid vertices, as training can leave it: exact sdf zeros there
    norms = model.vertices().detach().norm(dim=-1)
    radius = norms[(norms - 0.6).abs() < 0.05].mode().values
    with torch.no_grad():
        model.sdf.copy_(radius - norms)
    assert (model.sdf == 0).sum() >= 1
    mesh = model.get_mesh()
    paths = export_textured_mesh(mesh.verts.detach(), mesh.faces, albedo, tmp_path / "out", texture_size=64)
    (glb,) = trimesh.load(paths["glb"]).geometry.values()
    for reloaded in (trimesh.load(paths["obj"], process=False), glb):
        assert len(reloaded.faces) == len(mesh.faces)
        assert degenerate_faces(reloaded) == 0
        assert (faces_per_edge(reloaded) == 2).all()                    # closed, and no non-manifold edge


def test_export_welds_coincident_vertices_and_drops_the_faces_they_collapse(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    copy = len(sphere.vertices)
    verts = np.concatenate([sphere.vertices, sphere.vertices[:1]])      # vertex `copy` duplicates vertex 0
    faces = sphere.faces.copy()
    first = np.nonzero((faces == 0).any(1))[0][0]
    faces[first][faces[first] == 0] = copy                               # one face uses the copy
    other = faces[first][faces[first] != copy][0]
    faces = np.concatenate([faces, [[0, copy, other]]])                  # a zero-area sliver between the copies
    paths = export_textured_mesh(torch.tensor(verts, dtype=torch.float32), torch.tensor(faces), albedo, tmp_path, 64)
    reloaded = trimesh.load(paths["obj"], process=False)
    assert len(reloaded.faces) == len(sphere.faces) and degenerate_faces(reloaded) == 0
    assert (faces_per_edge(reloaded) == 2).all()


def test_mesh_from_nerf_is_the_blob_surface():
    torch.manual_seed(0)
    cfg = NerfConfig(num_levels=4, log2_hashmap_size=12, finest_resolution=32, hidden_dim=16, num_layers=2)
    field = NeRFField(cfg)
    with torch.no_grad():
        field.mlp[-1].weight.zero_()
        field.mlp[-1].bias.zero_()                           # density = exp(blob): a ball of known radius
    threshold = math.exp(5.0)
    verts, faces = mesh_from_nerf(field, 48, threshold)
    radius = cfg.blob_radius * math.sqrt(2 * math.log(cfg.blob_density / 5.0))
    assert verts.norm(dim=-1).sub(radius).abs().max() < 0.02
    mesh = trimesh.Trimesh(verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.volume > 0           # positive volume: faces wind outward
    with pytest.raises(GeometryError, match="threshold"):
        mesh_from_nerf(field, 16, 1e9)


def test_empty_mesh_is_a_geometry_error(tmp_path):
    with pytest.raises(GeometryError, match="empty"):
        export_textured_mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long), albedo, tmp_path, 64)


def test_write_video(tmp_path):
    frames = [np.full((33, 30, 3), 8 * i, dtype=np.uint8) for i in range(6)]
    write_video(frames, tmp_path / "v" / "rgb.mp4", tmp_path / "v" / "rgb.gif")
    assert iio.imread(tmp_path / "v" / "rgb.mp4").shape[0] == 6
    assert iio.imread(tmp_path / "v" / "rgb.gif").shape == (6, 33, 30, 3)
