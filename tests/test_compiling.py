"""train.compile: the hot paths trace with at most one graph break each, and the switch resolves per device."""

from dataclasses import replace

import pytest
import torch
import torch._dynamo as dynamo
import torch.nn.functional as F

from c123 import compiling
from c123 import volume_render as vr
from c123.config import DMTetConfig, NerfConfig
from c123.dmtet import DMTet, marching_tets
from c123.errors import C123Error
from c123.nerf import NeRFField
from c123.rasterizer import rasterize


@pytest.fixture(autouse=True)
def fresh_dynamo():
    saved = (dynamo.config.capture_dynamic_output_shape_ops, dynamo.config.capture_scalar_outputs)
    dynamo.config.capture_dynamic_output_shape_ops = dynamo.config.capture_scalar_outputs = True  # as enabled()
    dynamo.reset()
    yield
    dynamo.reset()
    dynamo.config.capture_dynamic_output_shape_ops, dynamo.config.capture_scalar_outputs = saved


def breaks(fn, *args) -> int:
    return dynamo.explain(fn)(*args).graph_break_count


def small_field() -> NeRFField:
    torch.manual_seed(0)
    return NeRFField(NerfConfig(num_levels=4, log2_hashmap_size=10, finest_resolution=64, backend="torch"))


def test_the_field_and_its_normals_trace_without_a_graph_break():
    field, x = small_field(), torch.rand(64, 3) - 0.5
    assert breaks(NeRFField.forward.eager, field, x) == 0
    assert breaks(NeRFField.forward_with_normal.eager, field, x) == 0


def test_a_render_chunk_with_masked_occupancy_traces_without_a_graph_break():
    field, rays = small_field(), 16
    rays_o = torch.tensor([[0.0, 0.0, 3.0]]).expand(rays, 3).contiguous()
    rays_d = F.normalize(torch.randn(rays, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    occupancy = vr.OccupancyGrid(1.0, 8, mode="mask")
    settings = vr.RaySettings("lambertian", num_samples=8, num_importance=4, perturb=True, bound=1.0)
    args = (field, rays_o, rays_d, rays_d, torch.ones(rays, 1, 1), settings, occupancy, torch.tensor(False),
            torch.rand(rays, 8), torch.rand(rays, 4))
    assert breaks(vr._chunk_work.eager, *args) == 0


def test_the_rasteriser_and_marching_tets_break_once_where_they_read_the_output_size():
    clip = torch.tensor([[-0.5, -0.5, 0.5, 1], [0.5, -0.5, 0.5, 1], [0, 0.5, 0.5, 1], [0.1, 0.1, 0.2, 1]])[None]
    faces = torch.tensor([[0, 1, 2], [0, 1, 3]], dtype=torch.int32)
    assert breaks(rasterize.eager, clip, faces, (16, 16)) == 1
    dmtet = DMTet(DMTetConfig(tet_resolution=8))
    verts, tets = dmtet._grid()
    assert breaks(marching_tets.eager, verts, 0.3 - verts.norm(dim=-1), tets, dmtet.edges()) == 1


def test_compile_is_on_for_cuda_and_off_for_cpu_by_default_and_checked():
    assert compiling.resolve("auto", "cuda") and not compiling.resolve("auto", "cpu")
    assert compiling.resolve("on", "cpu") and not compiling.resolve("off", "cuda")
    with pytest.raises(C123Error, match="train.compile"):
        compiling.resolve("fast", "cpu")


@pytest.mark.slow  # inductor builds C++ kernels: about a minute on an idle 2-core machine
def test_a_compiled_field_gives_the_eager_values_and_gradients():
    field, x = small_field(), torch.rand(32, 3) - 0.5
    sigma, albedo = field(x)
    (sigma.sum() + albedo.sum()).backward()
    eager_grad = field.encoder.embeddings.grad.clone()
    field.zero_grad()
    with compiling.enabled(True):
        sigma_c, albedo_c = field(x)
    (sigma_c.sum() + albedo_c.sum()).backward()
    torch.testing.assert_close(sigma_c, sigma, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(albedo_c, albedo, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(field.encoder.embeddings.grad, eager_grad, rtol=1e-4, atol=1e-6)


def test_a_checkpointed_compiled_render_recomputes_compiled_in_the_backward():
    """A stage runs its loss inside enabled(True) and its backward after the block has closed; the checkpointed
    chunks (nerf.grad_chunk_rays > 0, the paper preset, compiled by default on CUDA) are recomputed there and
    must run the graph their forward ran (before the fix: torch.utils.checkpoint's CheckpointError on the first
    backward). Values and gradients are the eager, one-graph render's."""
    field = small_field()
    g = torch.Generator().manual_seed(0)
    rays_o = torch.tensor([[0.0, 0.0, 2.5]]).expand(24, 3).contiguous()
    rays_d = F.normalize(torch.randn(24, 3, generator=g) * 0.05 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    settings = vr.RaySettings(num_samples=16, num_importance=0, perturb=False)

    def loss_of(chunk: int):
        out = vr.render_rays(field, rays_o, rays_d, replace(settings, grad_chunk=chunk))
        return out["rgb"].sum() + out["depth"].sum()

    field.zero_grad()
    loss_of(0).backward()
    eager = field.encoder.embeddings.grad.clone()
    field.zero_grad()
    with compiling.enabled(True):
        loss = loss_of(8)
    loss.backward()  # outside the block, as training.Stage.backward_and_step
    torch.testing.assert_close(field.encoder.embeddings.grad, eager, rtol=1e-4, atol=1e-6)
    rows_grad = []
    for on in (False, True):
        x = (torch.rand(20, 3, generator=torch.Generator().manual_seed(1)) - 0.5).requires_grad_()
        with compiling.enabled(on):
            y = vr.checkpointed_rows(field.normal, x, 6)
        y.sum().backward()
        rows_grad.append(x.grad)
    torch.testing.assert_close(rows_grad[1], rows_grad[0], rtol=1e-4, atol=1e-5)
