"""Camera convention (docs/ARCHITECTURE.md), rays, the novel-view sampler and bad-input errors."""

from __future__ import annotations

import pytest
import torch

from c123.cameras import (Cameras, focal_length, generate_rays, intrinsics, look_at, orbit, orbit_cameras,
                          projection_matrix, progressive_ratio, reference_camera, sample_novel_cameras,
                          view_ranges)
from c123.config import CameraConfig
from c123.errors import GeometryError
from c123.synthetic import get_scene
from helpers_fit import convention_holds


def test_camera_positions_follow_the_spherical_convention():
    cams = orbit_cameras(torch.tensor([90.0, 90.0, 90.0, 0.0, 180.0]), torch.tensor([0.0, 90.0, 180.0, 0.0, 0.0]),
                         2.0, 20.0)
    expected = torch.tensor([[0, 0, 2], [2, 0, 0], [0, 0, -2], [0, 2, 0], [0, -2, 0]], dtype=torch.float32)
    assert torch.allclose(cams.position, expected, atol=1e-5)


def test_c2w_is_a_rotation_looking_down_minus_z_at_the_origin_with_y_up():
    cams = orbit_cameras(torch.tensor([30.0, 90.0, 120.0, 0.0]), torch.tensor([-70.0, 10.0, 200.0, 45.0]), 3.2, 20)
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand(4, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(4), atol=1e-5)
    forward = -R[:, :, 2]
    assert torch.allclose(forward, -torch.nn.functional.normalize(cams.position, dim=-1), atol=1e-5)
    assert (R[:3, 1, 1] > 0).all()   # image up has a positive world-y component away from the poles
    assert torch.allclose(cams.c2w[:, 3], torch.tensor([0.0, 0, 0, 1]).expand(4, 4))


def test_reference_camera_is_at_plus_z_with_image_right_plus_x():
    ref = reference_camera(CameraConfig())
    assert len(ref) == 1
    assert torch.allclose(ref.position, torch.tensor([[0.0, 0.0, 3.2]]), atol=1e-5)
    assert torch.allclose(ref.c2w[0, :3, 0], torch.tensor([1.0, 0, 0]), atol=1e-6)
    assert torch.allclose(ref.c2w[0, :3, 1], torch.tensor([0.0, 1, 0]), atol=1e-6)


def test_look_at_agrees_with_orbit_cameras():
    cams = orbit_cameras(torch.tensor([50.0, 90.0, 140.0]), torch.tensor([-120.0, 30.0, 170.0]), 3.0, 20.0)
    c2w = look_at(cams.position, torch.zeros(3, 3), torch.tensor([[0.0, 1.0, 0.0]]).expand(3, 3))
    assert torch.allclose(c2w, cams.c2w, atol=1e-5)


def test_positive_azimuth_moves_the_camera_to_its_own_right():
    cams = orbit_cameras(90.0, torch.tensor([0.0, 10.0]), 3.2, 20.0)
    step = cams.position[1] - cams.position[0]
    assert (step @ cams.c2w[0, :3, 0]) > 0


def test_rays_are_unit_start_at_the_camera_and_row_zero_is_the_top():
    cams = orbit(3)
    rays_o, rays_d = generate_rays(cams, 6, 8)
    assert rays_o.shape == rays_d.shape == (3, 6, 8, 3)
    assert torch.allclose(rays_d.norm(dim=-1), torch.ones(3, 6, 8), atol=1e-6)
    assert torch.allclose(rays_o, cams.position[:, None, None].expand_as(rays_o))
    front = rays_d[0]   # azimuth 0: image right is +x, image up is +y
    assert front[0, 0, 0] < 0 and front[0, 0, 1] > 0 and front[-1, -1, 0] > 0 and front[-1, -1, 1] < 0
    # the field of view is vertical: the top and bottom edge rays are fovy apart
    top = generate_rays(cams[0], 2, 1)[1][0, :, 0]
    half = torch.rad2deg(torch.acos(top[0] @ torch.tensor([0.0, 0.0, -1.0])))
    assert 0.25 * 20.0 - 1e-3 < half < 0.5 * 20.0   # pixel centres sit inside the edge


def test_world_point_with_larger_x_projects_further_right_at_azimuth_0():
    cams = reference_camera(CameraConfig())
    K = intrinsics(cams, 64, 64)[0]
    w2c = torch.linalg.inv(cams.c2w[0])
    cols = []
    for x in (-0.3, 0.0, 0.3):
        p = w2c @ torch.tensor([x, 0.2, 0.0, 1.0])
        uv = K @ torch.stack([p[0], -p[1], -p[2]])   # OpenGL camera -> pixel (row down)
        cols.append(float(uv[0] / uv[2]))
    assert cols[0] < 32 - 1 < 32 + 1 < cols[2] and abs(cols[1] - 32) < 1e-3
    assert torch.isclose(focal_length(torch.tensor(90.0), 64), torch.tensor(32.0))


def test_projection_matrix_maps_near_and_far_planes_to_ndc_minus_one_and_one():
    P = projection_matrix(reference_camera(CameraConfig()), 1.0, 10.0)[0]
    for z, ndc in ((-1.0, -1.0), (-10.0, 1.0)):
        clip = P @ torch.tensor([0.0, 0.0, z, 1.0])
        assert torch.isclose(clip[2] / clip[3], torch.tensor(ndc), atol=1e-5)
    edge = P @ torch.tensor([0.0, torch.tan(torch.deg2rad(torch.tensor(10.0))), -1.0, 1.0])
    assert torch.isclose(edge[1] / edge[3], torch.tensor(1.0), atol=1e-5)


def test_progressive_view_reaches_the_full_range_at_40_percent_of_the_nerf_stage():
    # nerf/utils.py train_step: r = min(1, 0.2 + 2 * global_step / iters)
    cfg = CameraConfig()
    assert progressive_ratio(cfg, 0, 5000) == pytest.approx(0.2)
    assert progressive_ratio(cfg, 1000, 5000) == pytest.approx(0.6)
    assert progressive_ratio(cfg, 2000, 5000) == 1.0 and progressive_ratio(cfg, 4999, 5000) == 1.0
    ranges = view_ranges(cfg, 0.6)
    assert ranges["polar"] == pytest.approx((90 * 0.4 + 45 * 0.6, 90 * 0.4 + 105 * 0.6))
    assert ranges["azimuth"] == pytest.approx((-108.0, 108.0))
    assert ranges["radius"] == pytest.approx((3.2 * 0.4 + 3.0 * 0.6, 3.2 * 0.4 + 3.5 * 0.6))  # widens too


def test_novel_views_are_uniform_inside_the_ranges_of_their_ratio():
    cfg = CameraConfig()
    gen = torch.Generator().manual_seed(0)
    early = sample_novel_cameras(cfg, 4000, 0.2, gen)
    assert 81.0 <= early.polar.min() and early.polar.max() <= 93.0          # 20% of 45..105 around 90
    assert -36.0 <= early.azimuth.min() and early.azimuth.max() <= 36.0    # 20% of -180..180 around 0
    assert 3.16 <= early.radius.min() and early.radius.max() <= 3.26       # 20% of 3.0..3.5 around 3.2
    assert early.polar.max() - early.polar.min() > 11.0
    full = sample_novel_cameras(cfg, 4000, 1.0, gen)
    assert 45.0 <= full.polar.min() < 47.0 and 103.0 < full.polar.max() <= 105.0
    assert full.azimuth.min() < -170 and full.azimuth.max() > 170
    assert 3.0 <= full.radius.min() and full.radius.max() <= 3.5
    assert torch.allclose(full.fovy, torch.full((4000,), 20.0))
    a = sample_novel_cameras(cfg, 8, 0.3, torch.Generator().manual_seed(5))
    b = sample_novel_cameras(cfg, 8, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a.c2w, b.c2w)


def test_orbit_is_evenly_spaced_and_cameras_index_like_a_batch():
    cams = orbit(8, polar=80.0, start_azimuth=10.0)
    assert torch.allclose(cams.azimuth, 10.0 + 45.0 * torch.arange(8.0))
    assert torch.allclose(cams.polar, torch.full((8,), 80.0)) and len(cams) == 8
    assert isinstance(cams[2], Cameras) and len(cams[2]) == 1 and len(cams[-1]) == 1 and len(cams[1:4]) == 3
    assert torch.equal(cams[-1].c2w, cams.c2w[7:])
    assert cams.to("cpu").c2w.device.type == "cpu" and cams.to(torch.float64).c2w.dtype == torch.float64


@pytest.mark.parametrize("kwargs, word", [
    (dict(polar=90.0, azimuth=0.0, radius=0.0, fovy=20.0), "radius"),
    (dict(polar=90.0, azimuth=0.0, radius=-1.0, fovy=20.0), "radius"),
    (dict(polar=float("nan"), azimuth=0.0, radius=3.2, fovy=20.0), "polar"),
    (dict(polar=90.0, azimuth=float("inf"), radius=3.2, fovy=20.0), "azimuth"),
    (dict(polar=90.0, azimuth=0.0, radius=3.2, fovy=0.0), "fovy"),
])
def test_bad_cameras_raise_a_one_line_geometry_error(kwargs, word):
    with pytest.raises(GeometryError, match=word) as info:
        orbit_cameras(**kwargs)
    assert "\n" not in str(info.value)


def test_zero_reference_radius_in_the_config_raises_geometry_error():
    with pytest.raises(GeometryError, match="radius"):
        reference_camera(CameraConfig(ref_radius=0.0))


# --- the convention, pinned with the asymmetric toy: arm on +x, nose on +z, red channel grows with x ---

def _scene_rgba(cams: Cameras) -> torch.Tensor:
    return get_scene("toy").render(cams, 48, 48)["rgba"]


def mirrored_orbit_cameras(polar, azimuth, radius, fovy) -> Cameras:
    """A local copy of the camera placement with the azimuth sign flipped (x = -r sin(theta) sin(phi))."""
    theta, phi = torch.deg2rad(torch.as_tensor(polar)), torch.deg2rad(torch.as_tensor(azimuth))
    eye = radius * torch.stack([-theta.sin() * phi.sin(), theta.cos().expand_as(phi), theta.sin() * phi.cos()], -1)
    c2w = look_at(eye, torch.zeros_like(eye), torch.tensor([[0.0, 1.0, 0.0]]).expand_as(eye))
    n = eye.shape[0]
    return Cameras(torch.full((n,), float(polar)), -azimuth, torch.full((n,), radius), torch.full((n,), fovy), c2w)


def test_asymmetric_scene_pins_the_camera_convention():
    assert convention_holds(_scene_rgba)


def test_mirrored_azimuth_fails_the_convention_check():
    assert not convention_holds(_scene_rgba, mirrored_orbit_cameras)


def test_mirrored_image_frame_fails_the_convention_check():
    assert not convention_holds(lambda cams: _scene_rgba(cams).flip(2))
