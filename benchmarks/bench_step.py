"""Cost of one training step at the paper sizes, by component, with the host syncs and eager ops it makes.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_step.py [--compile] [--quick] [--nerf-size N] [--skip-counts] [--only nerf|dmtet] [--threads 1] [--repeat N] [--memory-limit GB]

Before building anything it estimates the host memory the run needs (c123.memory's measured laws, see
`host_need`) against --memory-limit (default: 3/4 of MemAvailable) and, when the paper sizes do not fit, runs the
largest NeRF size that does (and the DMTet step at the 64 grid and 256 px when the paper's does not fit), saying
so; when nothing fits it refuses with the figure (exit 2). Explicit --nerf-size / --quick are checked the same.

The paper preset (128 px novel views, 192 px reference view, 64 + 32 samples per ray, the 16-level hash grid;
DMTet on the A15 256 grid rendered at 1024 px) with the tiny random priors at the paper's prior input sizes
(Zero-1-to-3 at 256 px, Stable Diffusion at 512 px), both priors on (w3D = w2D = 0.5), on CPU with one torch
thread. The steps are mid-stage (global step 2004/2005 of the NeRF stage, so every hash level is active; the
DMTet stage's steps 5004/5005), after one update of the occupancy grid (the update itself is timed apart: it
runs every 16 steps). `--quick` runs the same at a sixteenth of the pixels and a 64 grid.

Printed per step kind (reference / novel view):
- CPU-seconds (process time) by component, exclusive of nested components: render, field normals of the
  regularisers, priors, regularisers, marching tets, rasteriser, backward, optimiser, other; then the same total
  split into user and system time, with the page faults: glibc returns freed blocks above its mmap threshold
  (at most 32 MB) to the kernel, so each step maps its large tensors afresh, and at the paper sizes that is a large part of a step's
  time (a GPU's caching allocator has no such cost);
- host syncs per step (c123.sync_count: the ops that make the host wait on CUDA) and which ops they were,
  eager ops per step, and bytes read + written by eager ops per sample point (NeRF steps; forward and whole step),
  counted on a third run of the step with the choices a CUDA run makes (nerf.occupancy_mode 'auto' masks empty
  samples on CUDA, compacts them on CPU; see `cuda_choices`).
With --compile (train.compile=on) the timed step runs the compiled hot paths after one warm-up step (whose
time, the compilation, is printed apart); syncs and ops are always counted on the eager step, since the compiled
code does the same work in fused kernels the dispatcher never sees.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import resource
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

import c123.stages as stages_mod
from c123.config import paper
from c123.priors.tiny import write_tiny_models
from c123.priors.loading import load_priors
from c123.reconstruct import build_dmtet_stage, build_nerf_stage, condition_priors, seed_everything
try:
    from c123.sync_count import SyncCounter
except ImportError:  # measuring an older checkout (PYTHONPATH=that checkout): the counter from beside this script
    import importlib.util

    _spec = importlib.util.spec_from_file_location("sync_count", Path(__file__).parents[1] / "c123" / "sync_count.py")
    _module = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_module)
    SyncCounter = _module.SyncCounter
try:
    from c123 import memory
except ImportError:  # an older checkout: the budget module from beside this script
    import importlib.util

    _spec = importlib.util.spec_from_file_location("c123_memory", Path(__file__).parents[1] / "c123" / "memory.py")
    memory = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(memory)
LiveBytes = memory.LiveBytes


class ComponentTimer:
    """Exclusive process-CPU seconds per named component (a nested component's time is not its parent's)."""

    current: ComponentTimer | None = None
    """The timer of the step being measured; wrapped functions report to it (none: they just run)."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.stack: list[list] = []

    @contextlib.contextmanager
    def part(self, name: str):
        now = time.process_time()
        if self.stack:
            self.stack[-1][1] += now - self.stack[-1][2]  # the parent's time so far
        self.stack.append([name, 0.0, now])
        try:
            yield
        finally:
            name, spent, since = self.stack.pop()
            now = time.process_time()
            self.seconds[name] += spent + now - since
            if self.stack:
                self.stack[-1][2] = now


def wrap(obj, attr: str, name: str, method: bool = False) -> None:
    """Time every call of obj.attr as component `name` of the current timer (skipped when obj has no attr;
    method=True wraps a class's method)."""
    fn = getattr(obj, attr, None)
    if fn is None:
        return

    def timed(*args, **kwargs):
        timer = ComponentTimer.current
        if timer is None:
            return fn(*args, **kwargs)
        with timer.part(name):
            return fn(*args, **kwargs)

    setattr(obj, attr, timed)


def reference_image(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA disk (uint8 [H,W,4]) with a depth map (a bump), as a dataset case provides."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    r2 = xx ** 2 + yy ** 2
    inside = r2 < 0.5
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, (100 + 100 * xx).clip(0, 255), 60
    rgba[..., 3] = inside * 255
    depth = np.where(inside, 1.0 - np.sqrt(np.clip(0.5 - r2, 0, None)), 0.0).astype(np.float32)
    return rgba, depth


def build(quick: bool, compile_on: bool, models: Path, device: str = "cpu", nerf_size: int | None = None,
          write_models: bool = True):
    """The paper preset with the tiny priors written to `models` (quick: smaller renders and grid; nerf_size:
    another novel-view size, the reference view scaled with it)."""
    cfg = paper()
    if write_models:
        write_tiny_models(models)
    cfg.prior.zero123_model, cfg.prior.sd_model = str(models / "zero123"), str(models / "stable-diffusion")
    cfg.prior.clip_model = str(models / "clip")
    cfg.schedule.variant = "fixed-switch"  # both priors, no CLIP detector to load
    cfg.train.device = device
    if quick:
        cfg.train.nerf_size, cfg.dmtet.render_size, cfg.dmtet.tet_resolution = 32, 256, 64
    if nerf_size:
        cfg.train.nerf_size = nerf_size
    if hasattr(cfg.train, "compile"):
        cfg.train.compile = "on" if compile_on else "off"
    elif compile_on:
        raise SystemExit("this checkout has no train.compile")
    return cfg


def make_generator(seed: int, device):
    if "device" in inspect.signature(seed_everything).parameters:
        return seed_everything(seed, device)
    return seed_everything(seed)


def run_step(stage, step: int, reference: bool) -> None:
    stage.before_step(step)
    terms = stage.loss_terms(step, reference, 0.5, 0.5)
    loss = sum(terms.values())
    timer = ComponentTimer.current
    with timer.part("backward") if timer else contextlib.nullcontext():
        stage.backward_and_step(loss)


def instrument(stage, field) -> None:
    """Wrap the components of a step (once per stage)."""

    for name, part in (("render_nerf", "render"), ("render_mesh", "render"), ("prior_terms", "priors"),
                       ("mesh_normal_consistency", "regularisers"), ("mesh_laplacian", "regularisers")):
        wrap(stages_mod, name, part)
    wrap(stages_mod.NerfStage, "regularisers", "regularisers")
    wrap(field, "normal", "field normals (regularisers)")
    wrap(stage.optimizer, "step", "optimiser")
    if "dmtet" in getattr(stage.module, "keys", lambda: ())():
        wrap(stage.module["dmtet"], "get_mesh", "marching tets")


@contextlib.contextmanager
def cuda_choices(occupancy):
    """What a CUDA run with checkpointed chunks picks where CPU and CUDA differ (nerf.occupancy_mode 'auto': mask
    on CUDA when nerf.grad_chunk_rays > 0; a one-graph CUDA run compacts, as CPU does), so the sync
    count is the CUDA step's; an older checkout without the choice is left as it is."""
    previous = getattr(occupancy, "mode", None)
    if previous is not None:
        occupancy.mode = "mask"
    try:
        yield
    finally:
        if previous is not None:
            occupancy.mode = previous


def measure(label: str, stage, steps: list[tuple[int, bool]], field, compile_on: bool, samples_per_step,
            occupancy=None, count: bool = True, repeat: int = 1) -> None:
    """Time and count each step kind of `stage` (the count with the CUDA choices, see `cuda_choices`)."""
    instrument(stage, field)
    for step, reference in steps:
        kind = "reference" if reference else "novel"
        if compile_on:
            tic = time.process_time()
            run_step(stage, step, reference)
            print(f"{label} {kind}: warm-up (compilation) {time.process_time() - tic:.1f} CPU-s")
        ComponentTimer.current = timer = ComponentTimer()
        before, tic = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
        for _ in range(repeat):
            run_step(stage, step, reference)
        total = (time.process_time() - tic) / repeat
        after = resource.getrusage(resource.RUSAGE_SELF)
        ComponentTimer.current = None
        parts = {k: v / repeat for k, v in timer.seconds.items()}
        parts["other"] = total - sum(parts.values())
        mean = f" (mean of {repeat})" if repeat > 1 else ""
        print(f"{label} {kind} step{mean}: {total:.2f} CPU-s = " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
        print(f"{label} {kind} step{mean}: user {(after.ru_utime - before.ru_utime) / repeat:.2f} + system "
              f"{(after.ru_stime - before.ru_stime) / repeat:.2f} CPU-s, "
              f"{(after.ru_minflt - before.ru_minflt) / repeat / 1e6:.2f}M page faults")
        if not count:
            continue
        with LiveBytes() as live, SyncCounter() as count, cuda_choices(occupancy):
            with torch.compiler.set_stance("force_eager") if compile_on else contextlib.nullcontext():
                run_step(stage, step, reference)
        reasons = ", ".join(f"{k} x{v}" for k, v in count.reasons.most_common())
        print(f"{label} {kind} step: {count.syncs} host syncs ({reasons or 'none'}), {count.ops} eager ops")
        print(f"{label} {kind} step: peak live tensor bytes {live.peak / 1e9:.3f} GB beyond the parameters and "
              f"optimiser state (eager, the CUDA choices: occupancy 'mask'; tiny priors)")
        n = samples_per_step(reference)
        if n:
            print(f"{label} {kind} step: {count.bytes / n / 1e3:.1f} KB read+written by eager ops per sample point "
                  f"({n} sample points)")


def render_bytes_per_sample(field, cfg, gen, size: int = 32) -> None:
    """Eager memory traffic of a render alone (forward without autograd, with normals, every sample evaluated),
    per sample point; a small image, as the figure does not depend on its size."""
    from c123.cameras import orbit
    from c123.volume_render import RaySettings, render_nerf

    cams = orbit(1, polar=80.0)
    with torch.no_grad(), SyncCounter() as count:
        render_nerf(field, cams, size, size, RaySettings("lambertian", cfg.nerf.num_samples, cfg.nerf.num_importance),
                    generator=gen)
    n = size * size * (cfg.nerf.num_samples + cfg.nerf.num_importance)
    print(f"render forward ({size} px, no occupancy grid, with normals): {count.bytes / n / 1e3:.1f} KB per sample "
          f"point, {count.ops} eager ops")


def nerf_setup(cfg, device):
    """(reference rgba, the NeRF stage's build (field, stage, occupancy grid), priors, generator), every hash level
    active."""
    rgba_np, depth_np = reference_image()
    rgba = torch.from_numpy(rgba_np).float().div(255).permute(2, 0, 1)[None]
    depth = torch.from_numpy(depth_np)[None, None]
    gen = make_generator(0, device)
    priors = load_priors(cfg, device)
    condition_priors(priors, rgba, "a red ball", cfg, device)
    built = build_nerf_stage(rgba, depth, priors, "a red ball", cfg, gen, device)
    built.field.set_level_ratio(1.0)
    return rgba, built, priors, gen


PROCESS_BYTES = 1.5e9
"""Python, torch, diffusers and the tiny priors: the RSS of the process before its first step (about)."""
RSS_PER_LIVE_BYTE = 1.3
"""glibc keeps freed blocks below its mmap threshold and fragments: RSS over live tensor bytes (about)."""


def host_need(cfg, counts: bool) -> dict[str, float]:
    """Estimated peak RSS (bytes) of this benchmark's NeRF and DMTet parts with `cfg`: the live-bytes laws of
    c123.memory (the eager steps; the count run masks, i.e. evaluates every sample, the timed one compacts on
    CPU; both with every cell occupied, the worst case) times the allocator slack, plus the process."""
    per_ray = cfg.nerf.num_samples + cfg.nerf.num_importance
    state = memory._nerf_parameters(cfg.nerf) * memory.NERF_STATE_BYTES_PER_PARAMETER
    size, ref = cfg.train.nerf_size, round(cfg.train.nerf_size * cfg.train.ref_scale)
    modes = ("mask", "compact") if counts else ("compact",)
    nerf = max(max(memory.NERF_OPTIMISER_BYTES, memory.nerf_step_bytes(mode, kind, n * n, per_ray, cfg.nerf.grad_chunk_rays))
               for mode in modes for kind, n in (("reference", ref), ("novel", size)))
    fixed, per_pixel, per_tet = memory.DMTET_LAW
    dmtet = fixed + per_pixel * cfg.dmtet.render_size ** 2 + per_tet * memory.tets_of(cfg.dmtet.tet_resolution)
    return {"nerf": PROCESS_BYTES + RSS_PER_LIVE_BYTE * (state + nerf),
            "dmtet": PROCESS_BYTES + RSS_PER_LIVE_BYTE * (state + dmtet)}


def fit_sizes(args, limit: float) -> tuple[int | None, int, bool]:
    """(nerf_size, nerf.grad_chunk_rays, quick dmtet) that fit `limit` bytes: the paper size with its chunk, else
    with smaller chunks (a chunk's graph is most of a checkpointed step), else smaller sizes; (None, ...) when
    nothing fits."""
    base = build(args.quick, False, Path(args.models), nerf_size=args.nerf_size, write_models=False)
    counts = not args.skip_counts
    sizes = [base.train.nerf_size] if (args.nerf_size or args.quick) else list(range(base.train.nerf_size, 15, -16))
    chunks = [c for c in (base.nerf.grad_chunk_rays, 512, 256, 128) if c <= base.nerf.grad_chunk_rays] or [0]
    need_dmtet = host_need(base, counts)["dmtet"] if args.only != "nerf" else 0
    quick_dmtet = need_dmtet > limit and not args.quick
    if quick_dmtet:
        base.dmtet.render_size, base.dmtet.tet_resolution = 256, 64
        need_dmtet = host_need(base, counts)["dmtet"]
        if need_dmtet > limit:
            return None, 0, True
    if args.only == "dmtet":
        return base.train.nerf_size, chunks[0], quick_dmtet
    for size, chunk in [(sizes[0], c) for c in chunks] + [(s, chunks[-1]) for s in sizes[1:]]:
        base.train.nerf_size, base.nerf.grad_chunk_rays = size, chunk
        if host_need(base, counts)["nerf"] <= limit:
            return size, chunk, quick_dmtet
    return None, 0, quick_dmtet


def check_memory(args) -> None:
    """Pick the sizes this machine can hold (see the module's docstring); exit 2 when none."""
    limit = (args.memory_limit * 1e9 if args.memory_limit else 0.75 * memory.available_host_bytes())
    paper_cfg = build(False, False, Path(args.models), write_models=False)
    need = host_need(paper_cfg, not args.skip_counts)
    print(f"memory: the paper sizes need about {need['nerf'] / 1e9:.1f} GB (NeRF steps) and {need['dmtet'] / 1e9:.1f} "
          f"GB (DMTet step) of host memory; limit {limit / 1e9:.1f} GB"
          f"{'' if args.memory_limit else ' (3/4 of MemAvailable; --memory-limit GB to change)'}")
    size, chunk, quick_dmtet = fit_sizes(args, limit)
    if size is None:
        smallest = build(args.quick, False, Path(args.models), nerf_size=16, write_models=False)
        smallest.nerf.grad_chunk_rays = min(smallest.nerf.grad_chunk_rays, 128)  # the smallest chunk tried
        print(f"bench_step: even a 16 px NeRF step needs about {host_need(smallest, True)['nerf'] / 1e9:.1f} GB of "
              f"host memory, more than the {limit / 1e9:.1f} GB limit: free memory or pass --memory-limit GB")
        raise SystemExit(2)
    if not (args.nerf_size or args.quick) and size != paper_cfg.train.nerf_size:
        print(f"memory: running the NeRF steps at {size} px (reference {round(size * paper_cfg.train.ref_scale)} px)"
              f" instead of {paper_cfg.train.nerf_size}, the largest that fits")
    if chunk != paper_cfg.nerf.grad_chunk_rays:
        print(f"memory: checkpointed chunks of {chunk} rays instead of the preset's {paper_cfg.nerf.grad_chunk_rays} "
              f"(the same gradients; a chunk's graph is most of a step's memory)")
    if quick_dmtet:
        print("memory: running the DMTet step at the 64 grid and 256 px (the paper's 256 grid at 1024 px does not fit)")
    args.nerf_size, args.grad_chunk, args.quick_dmtet = size, chunk, quick_dmtet


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--compile", action="store_true", help="train.compile=on (after a warm-up step)")
    p.add_argument("--quick", action="store_true", help="a sixteenth of the pixels, a 64 tet grid")
    p.add_argument("--only", choices=("nerf", "dmtet"))
    p.add_argument("--nerf-size", type=int, help="novel-view size of the NeRF steps (paper 128; the reference view "
                   "x1.5): the eager 192 px reference step with normals needs more than 24 GB on CPU")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=1, help="timed steps per kind (their mean is printed)")
    p.add_argument("--skip-counts", action="store_true", help="time only: no sync/op/byte counts (they do not "
                   "depend on the size; their eager run evaluates every sample and needs far more memory)")
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "c123-bench-tiny-models"))
    p.add_argument("--memory-limit", type=float, metavar="GB", help="host memory the run may take (default: 3/4 of "
                   "MemAvailable); the sizes are reduced to fit, see above")
    p.add_argument("--plan", action="store_true", help="print the memory check's choice and stop")
    args = p.parse_args()
    check_memory(args)
    if args.plan:
        return
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = build(args.quick, args.compile, Path(args.models), nerf_size=args.nerf_size)
    cfg.nerf.grad_chunk_rays = args.grad_chunk
    if args.quick_dmtet:
        cfg.dmtet.render_size, cfg.dmtet.tet_resolution = 256, 64
    print(f"preset paper{' (quick)' if args.quick else ''}: nerf {cfg.train.nerf_size} px (reference "
          f"{round(cfg.train.nerf_size * cfg.train.ref_scale)} px), {cfg.nerf.num_samples}+{cfg.nerf.num_importance}"
          f" samples, checkpointed chunks of {cfg.nerf.grad_chunk_rays} rays, dmtet grid {cfg.dmtet.tet_resolution} at {cfg.dmtet.render_size} px; priors tiny at "
          f"{cfg.prior.zero123_size}/{cfg.prior.sd_size} px; {torch.get_num_threads()} thread(s), compile "
          f"{'on' if args.compile else 'off'}")
    rgba, built, priors, gen = nerf_setup(cfg, device)
    field, nerf, occupancy = built.field, built.stage, built.occupancy
    tic = time.process_time()
    occupancy.update(field, gen)
    print(f"occupancy grid update ({cfg.nerf.occupancy_resolution}^3 probes, every {cfg.nerf.occupancy_every} "
          f"steps): {time.process_time() - tic:.2f} CPU-s")
    if args.only != "dmtet":
        if not args.skip_counts:
            render_bytes_per_sample(field, cfg, gen)
        size = cfg.train.nerf_size
        per_ray = cfg.nerf.num_samples + cfg.nerf.num_importance
        samples = lambda reference: (round(size * cfg.train.ref_scale) ** 2 if reference else size * size) * per_ray
        measure("nerf", nerf, [(2004, True), (2005, False)], field, args.compile, samples, occupancy,
                not args.skip_counts, args.repeat)
    if args.only != "nerf":
        tic = time.process_time()
        dmtet, stage = build_dmtet_stage(built, rgba, priors, cfg, gen, device)
        print(f"dmtet init and stage ({dmtet.tets.shape[0]} tets): {time.process_time() - tic:.1f} CPU-s")
        import c123.rasterizer as raster_mod
        for attr in ("rasterize", "interpolate", "antialias"):
            wrap(raster_mod.TorchRasterizer, attr, "rasteriser")
        mesh = dmtet.get_mesh()
        print(f"dmtet mesh: {mesh.verts.shape[0]} vertices, {mesh.faces.shape[0]} faces")
        it = cfg.train.nerf_iters
        measure("dmtet", stage, [(it + 4, True), (it + 5, False)], field, args.compile, lambda reference: 0,
                count=not args.skip_counts, repeat=args.repeat)


if __name__ == "__main__":
    main()
