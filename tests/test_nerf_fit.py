"""NeRF field and volume renderer: fitting ground truth, conventions, shading, depth, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import c123.volume_render as vr
from c123.cameras import orbit_cameras, reference_camera
from c123.config import CameraConfig, NerfConfig, paper
from c123.errors import GeometryError
from c123.nerf import NeRFField
from c123.volume_render import OccupancyGrid, RaySettings, render_nerf, render_rays
from helpers_fit import convention_holds, heldout_psnr
from test_cameras import mirrored_orbit_cameras

SMALL = NerfConfig(num_levels=4, log2_hashmap_size=12, base_resolution=8, finest_resolution=64, hidden_dim=16,
                   num_layers=2, num_samples=24, num_importance=8)


class SphereField(torch.nn.Module):
    """An opaque ball of radius 0.3 with albedo given by position and analytic normals (test oracle)."""

    bound = 1.0

    def forward(self, x):
        sigma = 2000.0 * torch.sigmoid((0.3 - x.norm(dim=-1)) / 0.002)
        return sigma, (x + 1) / 2

    def forward_with_normal(self, x):
        return (*self(x), F.normalize(x, dim=-1))


# --- fitting ground truth ---

@pytest.fixture(scope="module")
def fitted(fitted_toy_nerf):
    return fitted_toy_nerf


def test_nerf_fits_16_ground_truth_views_to_25db_on_8_heldout_views(fitted):
    scene, fit = fitted
    value = heldout_psnr(fit, scene, size=64, views=8)
    print(f"\nNeRF fit: held-out PSNR {value:.2f} dB after {fit.iters} iterations in {fit.seconds:.1f} s "
          f"(last batch {fit.train_psnr:.2f} dB)")
    assert value >= 25.0


def test_fitted_nerf_follows_the_camera_convention_and_a_mirrored_azimuth_fails(fitted):
    _, fit = fitted

    def nerf_rgba(cams):
        with torch.no_grad():
            out = render_nerf(fit.field, cams, 48, 48, RaySettings(num_samples=fit.cfg.num_samples,
                              num_importance=fit.cfg.num_importance, perturb=False), occupancy=fit.occupancy,
                              bg_color=torch.zeros(3))   # on black, rgb is the premultiplied colour
        alpha = out.opacity.clamp(min=1e-6)
        return torch.cat([out.rgb / alpha, out.opacity], -1)

    assert convention_holds(nerf_rgba)
    assert not convention_holds(nerf_rgba, mirrored_orbit_cameras)


# --- the field ---

def test_density_is_exp_of_raw_plus_gaussian_blob_and_albedo_is_sigmoid():
    field = NeRFField(SMALL)
    last = field.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-1.0, 0.0, 2.0, -2.0]))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.9, 0.9, 0.9]])
    sigma, albedo = field(x)
    blob = 10.0 * torch.exp(-(x ** 2).sum(-1) / (2 * 0.2 ** 2))
    assert torch.allclose(sigma, torch.exp(-1.0 + blob), rtol=1e-5)
    assert torch.allclose(albedo, torch.sigmoid(torch.tensor([0.0, 2.0, -2.0])).expand(3, 3))
    assert torch.allclose(field.density(x), sigma)


def textured_field() -> NeRFField:
    """A small field whose hash table is far from its near-zero init, so every level shows in the output."""
    torch.manual_seed(0)
    field = NeRFField(SMALL)
    with torch.no_grad():
        field.encoder.embeddings.uniform_(-0.5, 0.5)
    return field


def test_normal_is_the_official_central_difference_of_the_density():
    field = textured_field()
    x = torch.rand(64, 3) * 1.8 - 0.9
    x[0] = torch.tensor([0.995, 0.0, -0.999])                   # probes past the bound are clamped to it
    # network_grid.py finite_difference_normal: -(sigma(x + e) - sigma(x - e)) / (2 eps), eps = 1e-2
    eps = 1e-2
    grad = torch.stack([field.density((x + e).clamp(-1, 1)) - field.density((x - e).clamp(-1, 1))
                        for e in torch.eye(3) * eps], -1) / (2 * eps)
    assert torch.allclose(field.normal(x), F.normalize(-grad, dim=-1), atol=1e-5)
    sigma, albedo, normal = field.forward_with_normal(x)
    assert torch.equal(sigma, field(x)[0]) and torch.equal(albedo, field(x)[1])


def test_normal_of_a_flat_density_is_zero_not_nan():
    field = NeRFField(SMALL)
    with torch.no_grad():
        for p in field.parameters():
            p.zero_()
    far = torch.tensor([[0.9, 0.9, 0.9]])                       # the blob is ~0 here: the density is flat
    assert torch.equal(field.normal(far), torch.zeros(1, 3))


def test_blob_normals_point_outwards_and_keep_a_graph_only_when_training():
    field = NeRFField(SMALL)
    with torch.no_grad():
        field.mlp[-1].weight.zero_()
    x = torch.tensor([[0.1, 0.0, 0.0], [0.0, -0.2, 0.0], [0.05, 0.05, 0.1]])
    n = field.normal(x)
    # central differences of step 1e-2 tilt off-axis normals of this steep exp(blob) by ~0.1 degree
    assert torch.allclose(n, F.normalize(x, dim=-1), atol=5e-3) and n.requires_grad
    with torch.no_grad():
        assert not field.normal(x).requires_grad
    field.normal(x).sum().backward()   # normal losses reach the parameters (first order: no double backward)
    assert field.encoder.embeddings.grad is not None


def test_state_dict_holds_only_floating_tensors_and_reloads_exactly():
    field = textured_field()
    state = field.state_dict()
    assert set(state) == {"encoder.embeddings"} | {f"mlp.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")}
    assert all(t.is_floating_point() for t in state.values())
    assert all(b.is_floating_point() for b in field.buffers())
    fresh = NeRFField(SMALL)
    fresh.load_state_dict(state)
    x = torch.rand(40, 3) * 2 - 1
    for a, b in zip(fresh.forward_with_normal(x), field.forward_with_normal(x)):
        assert torch.equal(a, b)


def test_level_ratio_limits_the_hash_levels_the_field_sees():
    field = textured_field()
    x = torch.rand(20, 3) * 2 - 1
    full = field(x)[0]
    field.set_level_ratio(0.25)                                  # 1 of 4 levels
    coarse = field(x)[0]
    with torch.no_grad():
        field.encoder.embeddings[field.encoder.level_sizes[0]:] = 0.0   # finer levels no longer matter
    assert torch.equal(field(x)[0], coarse) and not torch.allclose(coarse, full)


def test_paper_field_is_the_official_network_grid():
    cfg = paper().nerf
    field = NeRFField(cfg)
    assert (cfg.interpolation, cfg.progressive_level, cfg.normal_eps) == ("smoothstep", True, 1e-2)
    assert (cfg.blob_density, cfg.blob_radius) == (10.0, 0.2)             # main.py defaults, exp activation
    # sigma_net = MLP(32, 4, hidden 64, 3 layers) on a 16-level, 2-feature grid of finest resolution 2048
    linears = [m for m in field.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(32, 64), (64, 64), (64, 4)]
    assert field.encoder.resolutions[-1] == 2048 and field.encoder.interpolation == "smoothstep"


def test_grid_and_other_parameters_partition_the_parameters():
    field = NeRFField(SMALL)
    grid, other = field.grid_parameters(), field.other_parameters()
    assert {id(p) for p in grid} | {id(p) for p in other} == {id(p) for p in field.parameters()}
    assert not {id(p) for p in grid} & {id(p) for p in other}
    assert grid == [field.encoder.embeddings]


# --- the renderer ---

def test_render_nerf_returns_images_and_per_sample_tensors_for_regularisers():
    field = NeRFField(SMALL)
    cams = orbit_cameras(torch.tensor([90.0, 70.0]), torch.tensor([0.0, 40.0]), 3.2, 20.0)
    out = render_nerf(field, cams, 12, 10, RaySettings("lambertian", num_samples=16, num_importance=8),
                      ambient=torch.tensor([0.2, 0.5]))
    assert out.rgb.shape == out.normal.shape == (2, 12, 10, 3)
    assert out.opacity.shape == out.depth.shape == (2, 12, 10, 1)
    assert out.weights.shape == (240, 24) and out.sample_normals.shape == (240, 24, 3)
    assert out.rays_d.shape == (240, 3)
    out.rgb.mean().backward()
    assert field.encoder.embeddings.grad.abs().sum() > 0
    assert all(p.grad is not None for p in field.other_parameters())
    assert render_nerf(field, cams, 4, 4, RaySettings(num_samples=8)).sample_normals is None


def test_opaque_sphere_depth_opacity_and_normals_are_exact():
    cams = reference_camera(CameraConfig())
    out = render_nerf(SphereField(), cams, 32, 32, RaySettings(num_samples=64, num_importance=64, perturb=False,
                                                          need_normals=True))
    centre = out.depth[0, 15:17, 15:17, 0]
    assert torch.allclose(centre, torch.full_like(centre, 3.2 - 0.3), atol=0.01)
    assert out.opacity[0, 16, 16, 0] > 0.999 and out.opacity[0, 0, 0, 0] < 1e-6
    assert out.depth[0, 0, 0, 0] == 0.0   # empty pixels have zero depth
    assert torch.allclose(out.normal[0, 16, 16], torch.tensor([0.0, 0.0, 1.0]), atol=0.1)
    hit = out.opacity[0, ..., 0] > 0.999
    radius_px = torch.sqrt(hit.sum() / torch.pi)   # 0.3 / (3.2 tan 10deg) * 16 px, a little more in perspective
    assert 8.0 < radius_px < 9.5


def test_shading_modes_and_background_blending():
    cams = reference_camera(CameraConfig())
    field = SphereField()
    kw = dict(num_samples=48, num_importance=32, perturb=False)
    albedo = render_nerf(field, cams, 16, 16, RaySettings("albedo", **kw))
    lit_full_ambient = render_nerf(field, cams, 16, 16, RaySettings("lambertian", **kw), ambient=1.0)
    assert torch.allclose(albedo.rgb, lit_full_ambient.rgb, atol=1e-5)
    white = render_nerf(field, cams, 16, 16, RaySettings("textureless", **kw), ambient=1.0)
    assert torch.allclose(white.rgb, torch.ones_like(white.rgb), atol=1e-4)
    # light from the camera, no ambient: the sphere's centre (n . l = 1) is fully lit, its rim dark
    dark = render_nerf(field, cams, 16, 16, RaySettings("textureless", **kw), ambient=0.0,
                       bg_color=torch.zeros(3)).rgb[0, ..., 0]
    assert dark[8, 8] > 0.95 and dark[8, 8] > dark[8, 5] > dark[8, 4] > 0.0
    side = render_nerf(field, cams, 16, 16, RaySettings("textureless", **kw), ambient=0.0, bg_color=torch.zeros(3),
                       light_dir=torch.tensor([[1.0, 0.0, 0.0]])).rgb[0, ..., 0]
    assert side[8, 11] > 0.5 and side[8, 4] < 0.05   # lit from +x: the right-hand side (x > 0) is bright
    normal = render_nerf(field, cams, 16, 16, RaySettings("normal", **kw), bg_color=torch.zeros(3))
    assert torch.allclose(normal.rgb[0, 7:9, 7:9].mean((0, 1)), torch.tensor([0.5, 0.5, 1.0]), atol=0.02)
    bg = torch.tensor([[0.2, 0.4, 0.6]])
    blended = render_nerf(field, cams, 16, 16, RaySettings(**kw), bg_color=bg)
    assert torch.allclose(blended.rgb[0, 0, 0], bg[0], atol=1e-5)
    assert torch.allclose(blended.rgb, albedo.rgb - (1 - albedo.opacity) * (1 - bg), atol=1e-5)


def test_chunked_render_matches_unchunked(monkeypatch):
    field = NeRFField(SMALL)
    cams = orbit_cameras(90.0, 30.0, 3.2, 20.0)
    settings = RaySettings(num_samples=16, num_importance=8, perturb=False)
    one = render_nerf(field, cams, 10, 10, settings)
    monkeypatch.setattr(vr, "CHUNK_RAYS", 7)
    many = render_nerf(field, cams, 10, 10, settings)
    assert torch.allclose(one.rgb, many.rgb, atol=1e-6) and torch.allclose(one.depth, many.depth, atol=1e-5)


class BoxField(SphereField):
    """An opaque box [-0.25, 0.25]^3 whose faces lie on cell walls of a 64^3 grid over [-1, 1]^3."""

    def forward(self, x):
        inside = (x.abs() < 0.25).all(-1)
        return torch.where(inside, 2000.0, 0.0), (x + 1) / 2


def test_occupancy_grid_probes_cell_centres_and_skips_empty_space_without_changing_the_image():
    # update_extra_state probes each cell at its centre +- half a cell; samples in empty cells are skipped.
    # A box on cell walls makes every cell exactly full or empty, so the image must not change at all.
    field = BoxField()
    field.density = lambda x: field(x)[0]
    grid = OccupancyGrid(1.0, resolution=64)
    assert grid.mask.all()   # everything is occupied until the first update
    grid.update(field, torch.Generator().manual_seed(0))
    assert grid.mask.sum() == 16 ** 3 and grid.mean_density == pytest.approx(2000.0 * 16 ** 3 / 64 ** 3)
    cams = orbit_cameras(80.0, 20.0, 3.2, 20.0)
    settings = RaySettings(num_samples=48, num_importance=32, perturb=False)
    full = render_nerf(field, cams, 24, 24, settings)
    skipped = render_nerf(field, cams, 24, 24, settings, occupancy=grid)
    assert torch.allclose(full.rgb, skipped.rgb, atol=1e-5) and torch.allclose(full.depth, skipped.depth, atol=1e-4)
    assert skipped.sample_valid.float().mean() < 0.2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_density_raises_geometry_error(bad):
    class Broken(SphereField):
        def forward(self, x):
            sigma, albedo = super().forward(x)
            return torch.where(x[:, 0] > 0.1, torch.full_like(sigma, bad), sigma), albedo

    with pytest.raises(GeometryError, match="non-finite") as info:
        render_nerf(Broken(), reference_camera(CameraConfig()), 8, 8, RaySettings(num_samples=16))
    assert "\n" not in str(info.value)


def test_diverged_nerf_weights_raise_geometry_error_not_silent_nans():
    field = NeRFField(SMALL)
    with torch.no_grad():
        field.mlp[-1].bias.fill_(float("nan"))
    with pytest.raises(GeometryError):
        render_rays(field, torch.tensor([[0.0, 0.0, 3.2]]), torch.tensor([[0.0, 0.0, -1.0]]),
                    RaySettings(num_samples=8))


def test_unknown_shading_is_rejected():
    with pytest.raises(ValueError, match="shading"):
        RaySettings(shading="phong")
