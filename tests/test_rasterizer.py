"""The pure-PyTorch rasteriser: depth test, perspective-correct interpolation, gradients against finite differences."""

import contextlib
import math

import pytest
import torch
import trimesh

from c123.errors import C123Error
from c123.rasterizer import TorchRasterizer, antialias, get_rasterizer, interpolate, rasterize

# vertex positions chosen off pixel-centre and pixel-boundary lines, so small perturbations change no coverage
TRI = [[-0.71, -0.63, 0.3, 1.2], [0.83, -0.52, 0.4, 1.0], [0.12, 0.77, 0.5, 0.9]]
FACE = torch.tensor([[0, 1, 2]], dtype=torch.int32)


def test_nearest_triangle_wins_regardless_of_order():
    far = [[-0.8, -0.8, 0.5, 1], [0.8, -0.8, 0.5, 1], [0.0, 0.8, 0.5, 1]]
    near = [[-0.5, -0.5, 0.2, 1], [0.5, -0.5, 0.2, 1], [0.0, 0.5, 0.2, 1]]
    for first, second, near_id in ((far, near, 2), (near, far, 1)):
        pos = torch.tensor([first + second], dtype=torch.float32)
        rast = rasterize(pos, torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32), (32, 32))
        ids = rast[0, ..., 3].long()
        assert ids[16, 16] == near_id                       # centre: both cover it, the near one is kept
        assert rast[0, 16, 16, 2].item() == pytest.approx(0.2)
        assert ids[4, 6] == 3 - near_id                     # only the big far triangle reaches here
        assert ids[0, 0] == 0 and (rast[0, 0, 0] == 0).all()


def test_rows_start_at_ndc_y_minus_one():
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [-1.0, -0.5, 0.0, 1.0]]])
    ids = rasterize(pos, FACE, (8, 8))[0, ..., 3]
    assert ids[0].sum() > 0 and ids[-1].sum() == 0


def test_interpolation_is_perspective_correct():
    # a tilted quad in camera space; interpolated camera-space points must lie on each pixel's ray
    cam = torch.tensor([[-0.6, -0.5, -2.0], [0.7, -0.6, -4.0], [0.6, 0.5, -5.0], [-0.5, 0.6, -2.5]], dtype=torch.float64)
    f = 1.0 / math.tan(math.radians(30))
    clip = torch.stack([f * cam[:, 0], f * cam[:, 1], -1.02 * cam[:, 2] - 0.2, -cam[:, 2]], -1)[None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = rasterize(clip, faces, (32, 32))
    pts = interpolate(cam[None], rast, faces)[0]
    hit = rast[0, ..., 3] > 0
    rows, cols = torch.nonzero(hit, as_tuple=True)
    ndc_x, ndc_y = (2 * cols + 1) / 32 - 1, (2 * rows + 1) / 32 - 1
    p = pts[hit]
    assert hit.sum() > 80
    torch.testing.assert_close(f * p[:, 0] / -p[:, 2], ndc_x.double(), atol=1e-9, rtol=0)
    torch.testing.assert_close(f * p[:, 1] / -p[:, 2], ndc_y.double(), atol=1e-9, rtol=0)


def test_interior_gradients_match_finite_differences():
    pos = torch.tensor([TRI], dtype=torch.float64, requires_grad=True)
    attr = torch.rand(1, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.rand(1, 12, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def loss(pos, attr):
        rast = rasterize(pos, FACE, (12, 12))
        return (interpolate(attr, rast, FACE) * weights[..., :2]).sum() + (rast[..., 2] * weights[..., 2]).sum()

    assert torch.autograd.gradcheck(loss, (pos, attr), eps=1e-6, atol=1e-6)


def test_silhouette_gradients_match_finite_differences():
    pos = torch.tensor([TRI], dtype=torch.float64, requires_grad=True)
    weights = torch.rand(1, 12, 12, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def coverage(pos):
        rast = rasterize(pos, FACE, (12, 12))
        hard = (rast[..., 3:] > 0).to(pos.dtype)            # no gradient: only antialias makes it differentiable
        return (antialias(hard, rast, pos, FACE) * weights).sum()

    grad = torch.autograd.grad(coverage(pos), pos)[0]
    assert grad[..., :2].abs().min() > 0.1                  # every x/y moves the silhouette
    assert torch.autograd.gradcheck(coverage, (pos,), eps=1e-6, atol=1e-6)


def test_interior_edges_are_not_blurred():
    # two triangles of one flat quad: their shared edge is no silhouette, so antialias leaves the inside alone
    pos = torch.tensor([[[-0.9, -0.83, 0, 1], [0.87, -0.91, 0, 1], [0.93, 0.88, 0, 1], [-0.81, 0.9, 0, 1]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    rast = rasterize(pos, faces, (16, 16))
    color = (rast[..., 3:] == 1).float()                    # different colour per triangle
    out = antialias(color, rast, pos, faces)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[2:-2, 2:-2] = True
    assert torch.equal(out[0][inside], color[0][inside])
    assert not torch.equal(out, color)                      # the outer border is antialiased


def test_many_small_triangles_cover_the_projected_disc():
    sphere = trimesh.creation.icosphere(subdivisions=5)     # 20480 faces
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    clip = torch.cat([0.8 * v[:, :2], 0.5 * v[:, 2:], torch.ones_like(v[:, :1])], -1)[None].repeat(2, 1, 1)
    faces = torch.tensor(sphere.faces, dtype=torch.int32)
    rast = rasterize(clip, faces, (128, 128))
    area = (rast[..., 3] > 0).float().sum((1, 2))
    expected = math.pi * (0.8 * 64) ** 2
    assert torch.allclose(area, torch.full_like(area, expected), rtol=0.01)
    # the front hemisphere (larger z is farther) is what we see
    z = interpolate(v[None], rast, faces)[..., 2][rast[..., 3] > 0]
    assert (z <= 1e-3).all()


def test_backend_selection():
    assert isinstance(get_rasterizer("torch"), TorchRasterizer)
    assert isinstance(get_rasterizer("auto", "cpu"), TorchRasterizer)
    with pytest.raises(C123Error, match="nvdiffrast"):
        get_rasterizer("nvdiffrast", "cpu")
    with pytest.raises(C123Error, match="unknown"):
        get_rasterizer("opengl")


def test_compacted_and_masked_paths_give_the_same_image_and_gradients():
    """On CPU the covered pixels and differing pixel pairs are gathered first; the masked path (what CUDA runs,
    taken here while a SyncCounter counts) examines every pixel: the same values and gradients."""
    from c123.sync_count import SyncCounter

    sphere = trimesh.creation.icosphere(subdivisions=3)
    verts = torch.tensor(sphere.vertices, dtype=torch.float32) * 0.7
    faces = torch.tensor(sphere.faces, dtype=torch.int64)
    results = []
    for count in (False, True):
        clip = torch.cat([verts[:, :2], verts[:, 2:] * 0.1 + 0.5, torch.ones(len(verts), 1)], -1)[None]
        clip.requires_grad_()
        colour = torch.linspace(0, 1, len(verts) * 3).reshape(-1, 3).requires_grad_()
        with SyncCounter() if count else contextlib.nullcontext():
            rast = rasterize(clip, faces, (48, 40))
            image = antialias(interpolate(colour, rast, faces), rast, clip, faces)
            (image * torch.linspace(0, 1, image.numel()).reshape(image.shape)).sum().backward()
        results.append((rast.detach(), image.detach(), clip.grad, colour.grad))
    assert 0.2 < (results[0][0][..., 3] > 0).float().mean() < 0.8
    for compacted, masked in zip(*results):
        torch.testing.assert_close(compacted, masked, rtol=1e-5, atol=1e-6)
