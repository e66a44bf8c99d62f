"""c123.memory: the live-bytes tracker (also under FakeTensorMode), the checkpointed render's gradients, the
priors' parameter counts and the budget arithmetic (docs/METHOD.md section 7)."""

from __future__ import annotations

import pytest
import torch

import c123.volume_render as vr
from c123 import memory
from c123.cameras import orbit
from c123.config import NerfConfig
from c123.nerf import NeRFField


def test_live_bytes_counts_what_autograd_keeps_and_what_is_freed():
    x = torch.randn(256, 256, requires_grad=True)  # 256 KiB, existed before: not counted
    with memory.LiveBytes() as live:
        y = (x * 2).sin()  # x*2 kept for sin's backward, y
        z = y.exp().sum()  # exp's result kept for its backward
        assert live.current == 3 * 256 * 256 * 4 + 4
        z.backward()  # x.grad allocated while the saved tensors are still alive
        assert live.peak >= 4 * 256 * 256 * 4
        del y, z
        assert live.current == 256 * 256 * 4  # x.grad alone


def _encode_peak(fake: bool) -> int:
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode

    torch.manual_seed(0)
    with FakeTensorMode() if fake else torch.device("cpu"):
        vae = AutoencoderKL(block_out_channels=[8, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                            up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, layers_per_block=1,
                            norm_num_groups=4).requires_grad_(False)
        image = torch.rand(1, 3, 32, 32, requires_grad=True)
        with memory.LiveBytes() as live:
            vae.encode(image).latent_dist.mean.sum().backward()
    return live.peak


def test_fake_tensor_mode_counts_the_same_bytes_as_real_tensors():
    """What lets the real priors be measured at their real sizes without their memory."""
    assert _encode_peak(fake=True) == _encode_peak(fake=False) > 0


def _render_grads(grad_chunk: int, mode: str | None, monkeypatch) -> tuple[torch.Tensor, list, int]:
    monkeypatch.setattr(vr, "CHUNK_RAYS", 32)  # several chunks on a 16 px image
    torch.manual_seed(0)
    field = NeRFField(NerfConfig(num_levels=4, log2_hashmap_size=10, finest_resolution=64, hidden_dim=16,
                                 num_layers=2))
    occupancy = None
    if mode is not None:
        occupancy = vr.OccupancyGrid(1.0, 16, mode=mode)
        occupancy.update(field, torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    with memory.LiveBytes() as live:
        settings = vr.RaySettings("lambertian", num_samples=8, num_importance=4, need_normals=True,
                                  grad_chunk=grad_chunk)
        out = vr.render_nerf(field, orbit(1, polar=80.0), 16, 16, settings, occupancy=occupancy, generator=gen)
        loss = (out.rgb.square().mean() + out.weights.square().mean() + out.sample_normals.abs().mean()
                + out.depth.mean())
        loss.backward()
    return loss.detach(), [p.grad.clone() for p in field.parameters()], live.peak


@pytest.fixture
def float64():
    """In float64 the chunks' different summation order (the hash table's index_add) is below 1e-12, so any
    larger gradient difference is a real one; in float32 it is rounding of order 1e-5."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("mode", [None, "mask", "compact"])
def test_checkpointed_chunks_give_the_plain_paths_gradients_in_less_memory(mode, monkeypatch, float64):
    loss, grads, peak = _render_grads(0, mode, monkeypatch)
    loss_c, grads_c, peak_c = _render_grads(50, mode, monkeypatch)  # 6 chunks, the last one shorter
    assert grads[0].dtype == torch.float64
    diff = max((a - b).abs().max().item() for a, b in zip(grads, grads_c))
    scale = max(a.abs().max().item() for a in grads)
    print(f"occupancy {mode}: max abs gradient difference {diff:.3g} (largest gradient {scale:.3g}); "
          f"peak live bytes {peak / 1e6:.2f} MB plain, {peak_c / 1e6:.2f} MB checkpointed")
    assert abs(loss - loss_c) < 1e-12
    assert diff <= 1e-12 * max(scale, 1.0)
    assert peak_c < 0.7 * peak


def test_parameter_counts_kept_are_those_of_the_architectures():
    """The small parts here (the large ones take minutes on the meta device: benchmarks/bench_memory.py)."""
    for prior, part in (("zero123", "clip_camera_projection"), ("clip", "model")):
        assert memory.parameter_count(prior, part) == memory.PARAMETER_COUNTS[(prior, part)]


def test_weight_bytes_follow_the_precision_each_prior_runs_in():
    half = memory.prior_weight_bytes("fp16", "cuda")
    full = memory.prior_weight_bytes("fp32", "cuda")
    assert half["zero123"] == full["zero123"]  # Zero-1-to-3 stays float32 under fp16 autocast, as the official
    assert 2 * half["stable_diffusion"]["unet"] == full["stable_diffusion"]["unet"] == 4 * 865_910_724
    assert memory.prior_weight_bytes("fp16", "cpu") == full  # CPU runs float32


def test_case_budget_is_weights_state_and_the_largest_step():
    from c123.config import paper

    cfg = paper()
    budget = memory.case_budget(cfg)
    kind, step = budget.peak_step
    fixed = sum(v for k, v in budget.parts.items() if not k.startswith("step:"))
    assert budget.total == fixed + step + memory.CUDA_CONTEXT_BYTES
    assert {"weights:zero123", "weights:stable_diffusion", "weights:clip", "state:nerf"} <= set(budget.parts)
    cfg.nerf.grad_chunk_rays = 0
    assert memory.case_budget(cfg).total > 5 * budget.total  # one graph of every sample: far more
    assert budget.total <= 22e9  # the paper preset's chunks fit a 24 GB card
    assert f"80 GB with {budget.cases_on(80e9)} case(s) per GPU" in budget.line()


def test_a_packing_beyond_the_card_is_refused_and_auto_fills_it():
    from c123.config import paper
    from c123.errors import C123Error

    budget = memory.case_budget(paper())
    card = 3.5 * budget.total
    assert memory.cases_per_gpu(budget, "auto", card) == 3
    assert memory.cases_per_gpu(budget, 3, card) == 3
    assert memory.cases_per_gpu(budget, 5, None) == 5  # memory unknown: taken as asked
    assert memory.cases_per_gpu(budget, "auto", None) == 1
    with pytest.raises(C123Error, match="use --cases-per-gpu 3 or auto"):
        memory.cases_per_gpu(budget, 4, card)


def import_bench_memory():
    """benchmarks/bench_memory.py as a module (the benchmarks folder is not a package)."""
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    return importlib.import_module("bench_memory")


@pytest.mark.slow
def test_the_nerf_law_predicts_a_measured_paper_field_step():
    """The law's constants (bench_memory.py) against a fresh measurement at a size the fit did not use."""
    bench_memory = import_bench_memory()
    bench = bench_memory.NerfBench()
    got = bench.peak(20, "compact", True)
    for kind in ("reference", "novel"):
        fixed, per = memory.NERF_LAW[("compact", False, kind)]
        assert abs(fixed + per * got[f"{kind}_samples"] - got[kind]) < 0.1 * got[kind]


def test_checkpointed_rows_give_the_same_values_and_gradients(float64):
    torch.manual_seed(0)
    field = NeRFField(NerfConfig(num_levels=4, log2_hashmap_size=10, finest_resolution=64, hidden_dim=16,
                                 num_layers=2))
    x = torch.rand(300, 3) * 2 - 1
    plain = field.normal(x)
    plain.square().sum().backward()
    grads = [p.grad.clone() for p in field.parameters()]
    field.zero_grad()
    chunked = vr.checkpointed_rows(field.normal, x, 64)
    chunked.square().sum().backward()
    assert (plain - chunked).abs().max() < 1e-12
    assert max((a - p.grad).abs().max().item() for a, p in zip(grads, field.parameters())) < 1e-12


def test_the_memory_benchmark_runs_the_stages_the_law_was_fitted_on():
    """benchmarks/bench_memory.py drives the real stage objects (it broke unseen when they changed): at 8 px its
    one-graph and checkpointed (32-ray chunks) steps are the law's bytes, the chunks' fewer."""
    bench_memory = import_bench_memory()
    bench = bench_memory.NerfBench()
    one, chunked = bench.peak(8, "mask", True), bench.peak(8, "mask", True, 32)
    for kind in ("reference", "novel"):
        for got, checkpointed in ((one, False), (chunked, True)):
            fixed, per = memory.NERF_LAW[("mask", checkpointed, kind)]
            assert abs(fixed + per * got[f"{kind}_samples"] - got[kind]) < 0.01 * got[kind], (kind, checkpointed)
        assert chunked[kind] < one[kind]
