"""The procedural scenes: framing, depth/normal/mask semantics, asymmetry, surface samples."""

from __future__ import annotations

import pytest
import torch

from c123.cameras import generate_rays, orbit, orbit_cameras, reference_camera
from c123.config import CameraConfig
from c123.errors import C123Error
from c123.synthetic import SCENES, get_scene

SIZE = 48


@pytest.fixture(scope="module", params=SCENES)
def rendered(request):
    scene = get_scene(request.param)
    cams = orbit_cameras(torch.tensor([90.0, 90.0, 60.0]), torch.tensor([0.0, 180.0, 45.0]), 3.2, 20.0)
    return scene, cams, scene.render(cams, SIZE, SIZE)


def test_render_returns_documented_shapes_and_ranges(rendered):
    _, _, out = rendered
    assert out["rgba"].shape == (3, SIZE, SIZE, 4) and out["rgba"].dtype == torch.float32
    assert out["depth"].shape == out["mask"].shape == (3, SIZE, SIZE) and out["mask"].dtype == torch.bool
    assert out["normal"].shape == (3, SIZE, SIZE, 3)
    assert 0.0 <= out["rgba"].min() and out["rgba"].max() <= 1.0


def test_empty_pixels_have_zero_depth_zero_alpha_and_the_background_colour(rendered):
    scene, cams, out = rendered
    empty = out["rgba"][..., 3] == 0
    assert empty.float().mean() > 0.4
    assert (out["depth"][empty] == 0).all() and (out["rgba"][..., :3][empty] == 1.0).all()
    grey = scene.render(cams[0], 16, 16, bg_color=torch.tensor([0.5, 0.5, 0.5]))["rgba"]
    assert torch.allclose(grey[..., :3][grey[..., 3] == 0], torch.tensor(0.5))


def test_depth_is_the_distance_along_the_ray_to_the_surface(rendered):
    scene, cams, out = rendered
    rays_o, rays_d = generate_rays(cams, SIZE, SIZE)
    full = out["rgba"][..., 3] == 1.0
    points = rays_o[full] + out["depth"][full][:, None] * rays_d[full]
    # pixel depth averages 2x2 subsamples, so allow a fraction of a pixel's footprint (~0.02 here)
    assert scene.sdf(points).abs().median() < 5e-3
    assert (out["depth"][full] > 2.5).all() and (out["depth"][full] < 3.8).all()


def test_normals_are_unit_and_face_the_camera(rendered):
    _, cams, out = rendered
    _, rays_d = generate_rays(cams, SIZE, SIZE)
    full = out["rgba"][..., 3] == 1.0
    n = out["normal"][full]
    assert torch.allclose(n.norm(dim=-1), torch.ones(n.shape[0]), atol=1e-4)
    assert ((n * rays_d[full]).sum(-1) < 0.05).float().mean() > 0.98


def test_silhouette_is_antialiased_and_mask_is_alpha_above_half(rendered):
    _, _, out = rendered
    alpha = out["rgba"][..., 3]
    assert ((alpha > 0) & (alpha < 1)).sum() > 20
    assert torch.equal(out["mask"], alpha > 0.5)


def test_object_fits_inside_the_reference_view_with_a_margin():
    for name in SCENES:
        alpha = get_scene(name).render(reference_camera(CameraConfig()), 64, 64)["rgba"][0, ..., 3]
        border = torch.cat([alpha[:4].flatten(), alpha[-4:].flatten(), alpha[:, :4].flatten(), alpha[:, -4:].flatten()])
        assert border.max() == 0, name
        assert 0.1 < alpha.mean() < 0.6, name


def test_scenes_are_asymmetric_left_right_and_front_back():
    def differ(a, b):
        # mean |a - b| over the pixels both views cover
        both = (a["alpha"] == 1) & (b["alpha"] == 1)
        return {k: float((a[k][both] - b[k][both]).abs().mean()) for k in ("rgb", "depth")}

    for name in SCENES:
        out = get_scene(name).render(orbit(4), SIZE, SIZE)   # azimuth 0, 90, 180, 270
        views = [{"alpha": rgba[..., 3], "rgb": rgba[..., :3], "depth": d}
                 for rgba, d in zip(out["rgba"], out["depth"])]
        flip = [{k: v.flip(1) for k, v in view.items()} for view in views]
        front, side_plus, back, side_minus = views
        # silhouettes seen from opposite sides are mirror images, so front/back differ in depth and colour
        assert (front["alpha"] - flip[0]["alpha"]).abs().mean() > 0.02, f"{name}: left/right symmetric silhouette"
        assert differ(front, flip[0])["rgb"] > 0.1, f"{name}: left/right symmetric colour"
        assert differ(front, flip[2])["depth"] > 0.01, f"{name}: front/back symmetric shape"
        assert differ(front, flip[2])["rgb"] > 0.1, f"{name}: front/back symmetric colour"
        assert differ(side_plus, flip[3])["rgb"] > 0.1, f"{name}: the +x and -x sides look alike"


def test_surface_samples_lie_on_the_surface_within_bound_and_are_reproducible():
    for name in SCENES:
        scene = get_scene(name)
        points = scene.sample_surface(3000)
        assert points.shape == (3000, 3)
        assert scene.sdf(points).abs().max() < 1e-3
        assert points.norm(dim=-1).max() < 0.6 and points.abs().max() < 0.46
        assert torch.equal(points, scene.sample_surface(3000))
        # spread over the whole object: every surface point of a coarse grid has a sample nearby
        axis = torch.linspace(-0.5, 0.5, 48)
        grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        near_surface = grid[scene.sdf(grid).abs() < 0.01]
        assert torch.cdist(near_surface, points).amin(1).max() < 0.08, name


def test_unknown_scene_name_lists_the_known_ones():
    with pytest.raises(C123Error, match="toy"):
        get_scene("teapot")
