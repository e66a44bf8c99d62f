"""DMTet: tet grid, marching tets, mesh renders against the synthetic scenes, and a silhouette fit."""

import math
import time

import pytest
import torch
import trimesh

from c123.cameras import orbit_cameras
from c123.config import DMTetConfig, NerfConfig
from c123.dmtet import (DMTet, Mesh, marching_tets, mesh_laplacian, mesh_normal_consistency, render_mesh,
                        tet_grid)
from c123.errors import GeometryError
from c123.synthetic import get_scene

SMALL_NERF = NerfConfig(num_levels=4, log2_hashmap_size=12, finest_resolution=64, hidden_dim=16, num_layers=2)


@pytest.fixture(autouse=True)
def _tet_cache(tmp_path_factory, monkeypatch):
    # keep generated grids out of the user's cache
    monkeypatch.setenv("HOME", str(tmp_path_factory.getbasetemp()))


def test_tet_grid_is_generated_and_cached(tmp_path):
    verts, tets = tet_grid(4, cache_dir=tmp_path)
    assert verts.shape == (5 ** 3, 3) and tets.shape == (6 * 4 ** 3, 4) and tets.dtype == torch.long
    assert verts.min() == -1 and verts.max() == 1
    v = verts[tets].double()
    volume = torch.linalg.det(v[:, 1:] - v[:, :1]).abs() / 6
    assert torch.allclose(volume, torch.full_like(volume, 0.5 ** 3 / 6))    # every tet is 1/6 of its cube
    assert volume.sum().item() == pytest.approx(8.0)                       # and they tile the cube
    assert (tmp_path / "4_tets.npz").exists()
    again = tet_grid(4, cache_dir=tmp_path)
    assert torch.equal(again[0], verts) and torch.equal(again[1], tets)


def test_marching_tets_sphere_is_closed_outward_and_has_the_right_area(tmp_path):
    verts, tets = tet_grid(32, cache_dir=tmp_path)
    radius = 0.6
    mesh_verts, faces = marching_tets(verts, radius - verts.norm(dim=-1), tets)   # sdf > 0 inside
    mesh = trimesh.Trimesh(mesh_verts.numpy(), faces.numpy(), process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0                                                  # outward winding
    assert mesh.area == pytest.approx(4 * math.pi * radius ** 2, rel=0.01)
    normals = Mesh(mesh_verts, faces).normals
    assert (normals * torch.nn.functional.normalize(mesh_verts, dim=-1)).sum(-1).min() > 0.95


def test_marching_tets_is_differentiable(tmp_path):
    verts, tets = tet_grid(3, cache_dir=tmp_path)
    verts = verts.double().requires_grad_(True)
    sdf = (0.7 - verts.detach().norm(dim=-1) + 0.01 * torch.arange(len(verts))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, s: marching_tets(v, s, tets)[0], (verts, sdf), eps=1e-6, atol=1e-6)


def test_mesh_regularisers_prefer_smooth_meshes():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32)
    noisy = verts + 0.03 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0))
    faces = torch.tensor(sphere.faces)
    smooth, rough = Mesh(verts, faces), Mesh(noisy.requires_grad_(True), faces)
    assert mesh_normal_consistency(smooth) < 0.01 < mesh_normal_consistency(rough)
    assert mesh_laplacian(smooth) < mesh_laplacian(rough)
    (mesh_normal_consistency(rough) + mesh_laplacian(rough)).backward()
    assert torch.isfinite(noisy.grad).all() and noisy.grad.abs().sum() > 0


def test_empty_mesh_is_a_geometry_error():
    with pytest.raises(GeometryError, match="empty"):
        Mesh(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.long))
    model = DMTet(DMTetConfig(tet_resolution=8), SMALL_NERF)
    model.init_from_density(lambda x: torch.zeros(len(x)), threshold=10.0)
    assert (model.sdf == -1).all()
    with pytest.raises(GeometryError, match="empty"):
        model.get_mesh()


def test_render_mesh_matches_the_scene_conventions():
    # init from the analytic SDF: density = threshold - 10 sdf gives sdf_init = clamp(-10 sdf, -1, 1)
    scene = get_scene("toy")
    model = DMTet(DMTetConfig(tet_resolution=32), SMALL_NERF)
    model.init_from_density(lambda x: 10.0 - 10.0 * scene.sdf(x), threshold=10.0)
    cams = orbit_cameras(torch.tensor([90.0, 60.0]), torch.tensor([0.0, 130.0]), 3.2, 20.0)
    target = scene.render(cams, 64, 64)
    with torch.no_grad():
        out = render_mesh(model.get_mesh(), scene.albedo, cams, 64, 64, shading="albedo")
    assert out.rgb.shape == (2, 64, 64, 3) and out.opacity.shape == out.depth.shape == (2, 64, 64, 1)
    assert out.weights is None and out.rays_d.shape == (2 * 64 * 64, 3)
    both = (out.opacity[..., 0] > 0.99) & target["mask"]
    assert (out.depth[..., 0] - target["depth"])[both].abs().mean() < 0.02     # distance along the ray
    cos = (out.normal * target["normal"]).sum(-1)[both]
    assert cos.mean() > 0.9                                                      # world-space normals
    assert (out.rgb - target["rgba"][..., :3])[both].abs().mean() < 0.05        # rows and columns line up
    with torch.no_grad():
        shaded = render_mesh(model.get_mesh(), scene.albedo, cams, 64, 64, shading="textureless", ambient=0.2,
                             bg_color=torch.zeros(3))
    grey = shaded.rgb[both]
    assert (grey[:, 0] == grey[:, 1]).all() and grey.min() >= 0.2 - 1e-6 and grey.max() <= 1.0 + 1e-6
    assert grey.max() > 0.95                                                     # lit from the camera
    assert (shaded.rgb[0, 0, 0] == 0).all()                                      # background colour


def _iou(model, cams, masks, size):
    with torch.no_grad():
        out = render_mesh(model.get_mesh(), torch.ones_like, cams, size, size)
    pred = out.opacity[..., 0] > 0.5
    return ((pred & masks).sum() / (pred | masks).sum()).item()


def _fit_silhouettes(model, scene, size, iters=60):
    """Fit sdf and deformation to 18 training silhouettes; held-out IoU before and after."""
    polar = torch.tensor([60.0, 90.0, 120.0]).repeat_interleave(6)
    train = orbit_cameras(polar, torch.arange(6.0).repeat(3) * 60 + polar / 3, 3.2, 20.0)
    held_out = orbit_cameras(torch.tensor([75.0, 105.0, 75.0, 105.0]), torch.tensor([30.0, 120.0, 210.0, 300.0]),
                             3.2, 20.0)
    target = scene.render(train, size, size)["rgba"][..., 3:]
    held_out_masks = scene.render(held_out, size, size)["mask"]
    before = _iou(model, held_out, held_out_masks, size)
    opt = torch.optim.Adam([model.sdf, model.deform], lr=0.03)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** (i / iters))
    for _ in range(iters):
        idx = torch.randperm(len(train))[:4]
        mesh = model.get_mesh()
        out = render_mesh(mesh, torch.ones_like, train[idx], size, size)
        loss = (out.opacity - target[idx]).square().mean() + 0.01 * (mesh_normal_consistency(mesh)
                                                                      + mesh_laplacian(mesh))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return before, _iou(model, held_out, held_out_masks, size)


def test_dmtet_initialised_from_a_fitted_nerf_reaches_iou_095(fitted_toy_nerf):
    torch.manual_seed(0)
    scene, fit = fitted_toy_nerf
    model = DMTet(DMTetConfig(tet_resolution=32, render_size=64), SMALL_NERF)
    with torch.no_grad():
        model.init_from_density(fit.field.density, threshold=10.0)  # METHOD.md: clamp(density - 10, -1, 1)
    before, after = _fit_silhouettes(model, scene, 64)
    print(f"DMTet from the fitted NeRF: tet resolution 32, renders 64x64, 60 iterations: "
          f"held-out IoU {before:.3f} -> {after:.3f}")
    assert after >= 0.95 and after > before


def test_dmtet_fits_silhouettes_of_a_synthetic_scene():
    torch.manual_seed(0)
    scene, size, resolution = get_scene("toy"), 64, 32
    model = DMTet(DMTetConfig(tet_resolution=resolution, render_size=size), SMALL_NERF)
    # a density whose threshold surface is inflated by 0.015 (a quarter of a tet cell), as a NeRF's would be
    model.init_from_density(lambda x: 10.0 - 10.0 * (scene.sdf(x) - 0.015), threshold=10.0)
    start = time.time()
    before, after = _fit_silhouettes(model, scene, size)
    print(f"DMTet silhouette fit: tet resolution {resolution}, renders {size}x{size}, 60 iterations "
          f"({time.time() - start:.1f}s): held-out IoU {before:.3f} -> {after:.3f}")
    assert after >= 0.95 and after > before
