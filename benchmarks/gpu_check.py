"""One run on one GPU (under 8 minutes): every component at the paper sizes, both backends where present, and
the projected minutes per case.

    python benchmarks/gpu_check.py [--device cuda] [--budget-s 420] [--skip-compile]

Measured (wall milliseconds, CUDA-synchronised, median of a few repeats after a warm-up; peak GPU memory):
- the hash grid, forward + backward of 2^18 points, per backend (torch, triton, tcnn when installed), and the
  triton kernels' largest difference from the torch reference;
- the NeRF step's core (render at 128 px novel / 192 px reference with normals, regularisers, backward, Adan;
  priors off): eager with each nerf.occupancy_mode (mask: no host sync, every sample evaluated; compact: the
  occupied samples only, a host sync per pass), then the faster one with train.compile=on (its first step, the
  compilation, is printed apart);
- the occupancy grid update (128^3 probes, every 16 steps);
- marching tets on the 256 grid, and the DMTet step's core at 1024 px per rasteriser backend (torch,
  nvdiffrast when installed);
- each prior's SDS step (VAE encode of the render, the UNet on the CFG batch, backward to the render) on the
  real architectures (random weights when the real ones are not on this machine: the cost is the same) in the
  run's precision: Stable Diffusion 2.1 in fp16 at 512 px, Zero-1-to-3 (xl) fp32 weights under fp16 autocast
  at 256 px;
- host syncs per step (c123.sync_count) of the full NeRF and DMTet steps with the tiny priors.
Projected minutes per case = (nerf_iters * (NeRF core + 3/4 * both priors) + nerf_iters / 16 * occupancy update
+ dmtet_iters * (DMTet core + 3/4 * both priors)) / 60000, with both priors on every novel-view step (3 of 4
steps; an upper bound: the schedule turns one weight down) and the fastest backend of each component.
`--device cpu` runs the same code at a sixteenth of the sizes (a smoke test of this script, not a measurement).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import bench_step  # noqa: E402  (this folder's helpers: the paper preset with tiny priors)

import c123.stages as stages_mod  # noqa: E402
from c123 import compiling  # noqa: E402
from c123.dmtet import render_mesh  # noqa: E402
from c123.hashgrid import HashGrid, triton_available  # noqa: E402
from c123.rasterizer import get_rasterizer  # noqa: E402
from c123.reconstruct import build_dmtet_stage  # noqa: E402
from c123.sync_count import SyncCounter  # noqa: E402

START = time.perf_counter()
RESULTS: dict[str, float] = {}


def elapsed() -> float:
    return time.perf_counter() - START


def timed(name: str, fn, device, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall ms of fn() (synchronised), after `warmup` calls; prints it with the peak memory. Off CUDA
    (the smoke test) each runs once, without a warm-up."""
    if device.type != "cuda":
        repeats, warmup = 1, 0
    for _ in range(warmup):
        fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        sync(device)
        tic = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - tic) * 1e3)
    ms = statistics.median(times)
    peak = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    print(f"{name:58s} {ms:9.1f} ms   peak {peak:5.2f} GiB   [{elapsed():5.0f} s]", flush=True)
    RESULTS[name] = ms
    return ms


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hash_grids(device, points: int) -> float:
    """Forward + backward of `points` points per backend; returns the fastest ms."""
    x = torch.rand(points, 3, device=device) * 2 - 1
    reference, best = None, float("inf")
    for backend in ("torch", "triton", "tcnn"):
        try:
            grid = HashGrid(backend=backend).to(device)
        except Exception as error:  # noqa: BLE001  (a backend that is not installed: say so, go on)
            print(f"hash grid {backend}: not available ({str(error).splitlines()[0]})")
            continue
        if grid.backend_for(device) != backend:
            print(f"hash grid {backend}: not used on {device.type}")
            continue

        def step():
            grid.zero_grad(set_to_none=True)
            grid(x).square().sum().backward()

        best = min(best, timed(f"hash grid {backend} fwd+bwd {points} points", step, device))
        with torch.no_grad():
            out = grid(x)
        if backend == "torch":
            reference, table = out, grid.embeddings.detach().clone()
        elif backend == "triton" and reference is not None:
            with torch.no_grad():
                grid.embeddings.copy_(table)
                print(f"  triton vs torch: max |difference| {(grid(x) - reference).abs().max().item():.2e}")
    return best


def stage_step(stage, step: int, reference: bool, priors_on: bool) -> None:
    stage.before_step(step)
    w = 0.5 if priors_on else 0.0
    stage.backward_and_step(sum(stage.loss_terms(step, reference, w, w).values()))


def count_syncs(label: str, stage, step: int, reference: bool) -> None:
    with SyncCounter() as count:
        stage_step(stage, step, reference, True)
    reasons = ", ".join(f"{k} x{v}" for k, v in count.reasons.most_common())
    print(f"{label}: {count.syncs} host syncs per step ({reasons or 'none'}), {count.ops} eager ops")


# ---- priors on the real architectures ------------------------------------------------------------------
REAL_UNET = (320, 640, 1280, 1280)
SMOKE_UNET = (32, 64, 64, 64)
"""Block widths of the real UNets (stable-diffusion-2-1-base, zero123-xl-diffusers), and of the smoke test's."""


def sd_unet(widths=REAL_UNET):
    """stable-diffusion-2-1-base's UNet (unet/config.json), random weights."""
    from diffusers import UNet2DConditionModel
    heads = (5, 10, 20, 20) if widths == REAL_UNET else 2
    return UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, block_out_channels=widths,
                                attention_head_dim=heads, cross_attention_dim=1024, use_linear_projection=True)


def zero123_unet(widths=REAL_UNET):
    """zero123-xl-diffusers' UNet (8 input channels: the noisy and the reference latents), random weights."""
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(sample_size=32, in_channels=8, out_channels=4, block_out_channels=widths,
                                attention_head_dim=8, cross_attention_dim=768)


def vae(widths=(128, 256, 512, 512)):
    """The shared VAE (AutoencoderKL, 4 latent channels), random weights."""
    from diffusers import AutoencoderKL
    blocks = len(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=widths,
                         down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                         layers_per_block=2, sample_size=512)


def prior_step(name: str, unet, encoder, size: int, context_shape, half_weights: bool, device, render: int) -> float:
    """One SDS step: the render resized to `size`, VAE-encoded with its graph, the UNet on the CFG batch
    without one, the fp32 gradient pushed back to the render."""
    from c123.priors.weights import fast_kernels

    dtype = torch.float16 if half_weights and device.type == "cuda" else torch.float32
    # .half(), not .to(dtype): diffusers' `to` warns of fp32-only modules on every dtype cast, even with none
    unet, encoder = (m.to(device).eval().requires_grad_(False) for m in (unet, encoder))
    if dtype == torch.float16:
        unet, encoder = unet.half(), encoder.half()
    fast_kernels(unet, device), fast_kernels(encoder, device)
    context = torch.randn(2, *context_shape, device=device, dtype=dtype)
    image = torch.rand(1, 3, render, render, device=device, requires_grad=True)
    extra = torch.randn(2, 4, size // 8, size // 8, device=device) if unet.config.in_channels == 8 else None
    amp = (torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" and not half_weights
           else contextlib.nullcontext())

    def step():
        image.grad = None
        with amp:
            x = F.interpolate(image, (size, size), mode="bilinear", align_corners=False)
            latents = encoder.encode(x.to(dtype) * 2 - 1).latent_dist.mean.float() * 0.18215
            with torch.no_grad():
                noisy = torch.cat([latents, latents]) + torch.randn_like(latents)
                if extra is not None:
                    noisy = torch.cat([noisy, extra], 1)
                eps = unet(noisy.to(dtype), torch.tensor([500] * 2, device=device), context).sample.float()
            grad = eps[1:] + 7.5 * (eps[1:] - eps[:1])
        (latents * grad).sum().backward()

    return timed(f"prior {name} SDS step ({size} px, CFG batch 2)", step, device, repeats=3, warmup=2)


def print_budget() -> None:
    """The budget measured on CPU (c123.memory, live tensor bytes) that the peaks printed below check."""
    from c123 import memory
    from c123.config import paper

    for chunk in sorted({0, paper().nerf.grad_chunk_rays}):  # one graph, and the preset's own chunks
        cfg = paper()
        cfg.nerf.grad_chunk_rays = chunk
        budget = memory.case_budget(cfg)
        print(f"budget (CPU-measured, nerf.grad_chunk_rays={chunk}): {budget.line()}; steps: "
              + ", ".join(f"{k[5:]} {v / 2 ** 30:.2f} GiB" for k, v in budget.parts.items() if k.startswith("step:")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the optional parts after this many seconds")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "c123-gpu-check-tiny-models"))
    args = p.parse_args()
    device = torch.device(args.device)
    quick = device.type != "cuda"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke test, reduced sizes)"
    print(f"device {name}; torch {torch.__version__}; triton {'yes' if triton_available() else 'no'}", flush=True)

    print_budget()
    grid_ms = hash_grids(device, 1 << (14 if quick else 18))

    cfg = bench_step.build(quick, False, Path(args.models), device=device.type)
    rgba, built, priors, gen = bench_step.nerf_setup(cfg, device)
    field, nerf, occupancy = built.field, built.stage, built.occupancy
    occ_ms = timed("occupancy grid update", lambda: occupancy.update(field, gen), device, repeats=1)
    it = 2004
    nerf_ms = float("inf")
    for mode in ("mask", "compact"):  # sync-free with every sample evaluated, or the occupied samples only
        occupancy.mode = mode
        ref = timed(f"nerf step core, reference view (eager, occupancy {mode})",
                    lambda: stage_step(nerf, it, True, False), device)
        novel = timed(f"nerf step core, novel view (eager, occupancy {mode})",
                      lambda: stage_step(nerf, it + 1, False, False), device)
        if (ref + 3 * novel) / 4 < nerf_ms:  # a reference view every 4 steps
            nerf_ms, best_mode, best_ref = (ref + 3 * novel) / 4, mode, ref
    occupancy.mode = best_mode
    print(f"  occupied cells {occupancy.mask.float().mean().item():.1%}; faster occupancy mode: {best_mode}")
    count_syncs("nerf step, novel view, tiny priors", nerf, it + 1, False)
    count_syncs("nerf step, reference view", nerf, it, True)
    if not args.skip_compile and elapsed() < args.budget_s:
        compiled = compiling.within(True, lambda: stage_step(nerf, it + 1, False, False))
        tic = time.perf_counter()
        try:
            compiled()
            sync(device)
        except Exception as error:  # noqa: BLE001  (report it and measure the rest: this run is the evidence)
            print(f"nerf step compilation FAILED: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
        else:
            print(f"nerf step compilation (first compiled step): {time.perf_counter() - tic:.1f} s", flush=True)
            novel_c = timed("nerf step core, novel view (compiled)", compiled, device)
            nerf_ms = min(nerf_ms, (best_ref + 3 * novel_c) / 4)

    dmtet, _ = build_dmtet_stage(built, rgba, priors, cfg, gen, device)
    timed(f"marching tets ({cfg.dmtet.tet_resolution} grid)", dmtet.get_mesh, device)
    dmtet_ms = float("inf")
    for backend in ("torch", "nvdiffrast"):
        try:
            raster = get_rasterizer(backend, device)
        except Exception as error:  # noqa: BLE001
            print(f"rasteriser {backend}: not available ({str(error).splitlines()[0]})")
            continue
        cfg.dmtet.backend = backend
        stage = stages_mod.DmtetStage(field, dmtet, rgba, priors, cfg, gen, device).build()
        first = cfg.train.nerf_iters + 4
        mesh = dmtet.get_mesh()
        cams = stages_mod.reference_camera(cfg.camera).to(device)
        size = cfg.dmtet.render_size
        timed(f"render_mesh {backend} {size} px fwd+bwd", lambda: render_mesh(
            mesh, lambda x: field(x)[1], cams, size, size, rasterizer=raster).rgb.sum().backward(),
            device)
        ref = timed(f"dmtet step core, reference view ({backend})", lambda: stage_step(stage, first, True, False),
                    device)
        novel = timed(f"dmtet step core, novel view ({backend})", lambda: stage_step(stage, first + 1, False, False),
                      device)
        dmtet_ms = min(dmtet_ms, (ref + 3 * novel) / 4)
        count_syncs(f"dmtet step, novel view, tiny priors ({backend})", stage, first + 1, False)

    priors_ms = 0.0
    render = cfg.train.nerf_size
    for label, unet, size, context, half in (("zero123", zero123_unet, cfg.prior.zero123_size, (1, 768), False),
                                             ("stable diffusion", sd_unet, cfg.prior.sd_size, (77, 1024), True)):
        if elapsed() > args.budget_s:
            print(f"prior {label}: skipped (over the time budget)")
            continue
        models = (unet(SMOKE_UNET), vae(SMOKE_UNET)) if quick else (unet(), vae())
        priors_ms += prior_step(label, *models, size // (4 if quick else 1), context, half, device, render)

    t = cfg.train
    minutes = (t.nerf_iters * (nerf_ms + 0.75 * priors_ms) + t.nerf_iters / cfg.nerf.occupancy_every * occ_ms
               + t.dmtet_iters * (dmtet_ms + 0.75 * priors_ms)) / 60000
    print(f"\nprojection: {t.nerf_iters} x ({nerf_ms:.1f} + 0.75 x {priors_ms:.1f}) + {t.nerf_iters} / "
          f"{cfg.nerf.occupancy_every} x {occ_ms:.1f} + {t.dmtet_iters} x ({dmtet_ms:.1f} + 0.75 x {priors_ms:.1f}) ms"
          f" = {minutes:.1f} minutes per case (hash grid {grid_ms:.1f} ms per 2^18 points); run took {elapsed():.0f} s")


if __name__ == "__main__":
    main()
