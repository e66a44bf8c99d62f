"""Peak live tensor bytes of the paper preset's steps and priors, and the budget of a whole case.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_memory.py [--part nerf|priors|dmtet|budget|compiled] [--compile]

Live tensor bytes (c123.memory.LiveBytes), not RSS: the bytes a GPU would hold. Printed:
- nerf: the NeRF step (reference and novel kind, priors off: their part is measured apart) at three small
  novel-view sizes, in both occupancy modes, with every occupancy cell occupied (the worst case) and after one
  update (a young field), eager (and compiled with --compile, one size); the law bytes = fixed + per_sample *
  samples fitted on the two smaller sizes and checked on the third; the paper-size figure it predicts;
- priors: each prior's weight bytes at the preset precision from the real architectures (meta device), and the
  SDS step of the real architectures at the paper's input sizes (FakeTensorMode: nothing allocated);
- dmtet: the DMTet step at small grids and render sizes, the law in pixels and tets;
- budget: c123.memory.case_budget per preset (the one-line verdicts);
- compiled: the NeRF step compiled beside eager at 16 px (what --compile adds to nerf), alone.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_step  # noqa: E402

from c123 import memory  # noqa: E402

MB = 1e6


class NerfBench:
    """One paper-preset field (every hash level active, an occupancy grid updated once) whose NeRF step is
    measured at several sizes and settings; priors off (their part is measured apart, `part_priors`)."""

    def __init__(self):
        import c123.stages as stages_mod
        from c123.config import paper
        from c123.nerf import NeRFField
        from c123.priors.loading import Priors

        self.stages, self.Priors = stages_mod, Priors
        self.base = paper()
        self.base.train.device = "cpu"
        self.base.train.compile = "off"
        # a 32^3 grid: the worst case fills it anyway, and a young field's occupancy is the same blob (the
        # paper's 128^3 update alone takes minutes of a busy CPU)
        self.base.nerf.occupancy_resolution = 32
        rgba, depth = bench_step.reference_image()
        self.rgba = torch.from_numpy(rgba).float().div(255).permute(2, 0, 1)[None]
        self.depth = torch.from_numpy(depth)[None, None]
        self.gen = bench_step.make_generator(0, "cpu")
        self.field = NeRFField(self.base.nerf)
        self.field.set_level_ratio(1.0)
        self.grid = None
        memory.install_compiled_counter()  # before anything is compiled

    def peak(self, nerf_size: int, mode: str, full: bool, grad_chunk: int = 0, compile_on: bool = False) -> dict:
        """{'reference', 'novel': peak live bytes of the step beyond the state, '<kind>_samples': its sample
        points, 'state': parameters + optimiser state + EMA}."""
        import copy

        cfg = copy.deepcopy(self.base)
        cfg.train.nerf_size, cfg.nerf.occupancy_mode, cfg.nerf.grad_chunk_rays = nerf_size, mode, grad_chunk
        cfg.train.compile = "on" if compile_on else "off"
        parts = self.stages.NerfStage(self.field, self.rgba, self.depth, self.Priors(), cfg, self.gen,
                                      torch.device("cpu"))
        stage, occupancy = parts.build(), parts.occupancy
        if self.grid is None:
            occupancy.update(self.field, self.gen)
            self.grid = (occupancy.density.clone(), occupancy.mask.clone(), occupancy.mean.clone())
        occupancy.density, occupancy.mask, occupancy.mean = (t.clone() for t in self.grid)
        if full:
            occupancy.mask.fill_(True)
        per_ray = cfg.nerf.num_samples + cfg.nerf.num_importance
        _step(stage, 2004, True)  # the optimiser's state exists before the measured steps
        out = {}
        for step, reference in ((2004, True), (2005, False)):
            kind = "reference" if reference else "novel"
            if compile_on:
                _step(stage, step, reference)
            out[kind], out["optimiser"] = measured_step(stage, step, reference)
            size = round(nerf_size * cfg.train.ref_scale) if reference else nerf_size
            out[f"{kind}_samples"] = size * size * per_ray
        out["state"] = memory.training_state_bytes(self.field, stage.optimizer, stage.ema.shadow)
        return out


def _step(stage, step, reference):
    stage.before_step(step)
    loss = sum(stage.loss_terms(step, reference, 0.0, 0.0).values())  # priors off: measured apart
    stage.backward_and_step(loss)


def measured_step(stage, step, reference) -> tuple[int, int]:
    """(peak live bytes of the loss and its backward, peak of the optimiser step) of one step, priors off. Apart,
    since at small sizes the optimiser's temporaries over the 64 MB hash table hide the render's bytes; the
    step's peak is the larger of the two (the render's graph is freed by the backward)."""
    with memory.LiveBytes() as live, memory.counting_compiled(live):
        stage.before_step(step)
        loss = sum(stage.loss_terms(step, reference, 0.0, 0.0).values())
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        del loss
        forward_backward = live.peak
        live.reset_peak()
        stage.optimizer.step()
        return forward_backward, live.peak


def fit(rows: dict, kind: str) -> tuple[float, float]:
    """(fixed, per_sample) of bytes = fixed + per_sample * samples through the first two rows."""
    (a, b) = list(rows.values())[:2]
    per = (b[kind] - a[kind]) / (b[f"{kind}_samples"] - a[f"{kind}_samples"])
    return a[kind] - per * a[f"{kind}_samples"], per


TETS_DIR = Path(tempfile.gettempdir()) / "c123-bench-tets"
"""Cache of the A15 tet grids the DMTet measurements build."""

CHUNK = 32
"""Rays per checkpointed chunk measured here: smaller than the images of the small sizes, so they do split."""
SIZES = (8, 12, 16)
"""Novel-view sizes of the fit (the first two) and of its check (the last); the reference view is 1.5 x."""


def part_nerf(args):
    bench = NerfBench()
    plans = [("mask", 0, SIZES), ("mask", CHUNK, SIZES), ("compact", 0, SIZES), ("compact", CHUNK, SIZES[:2])]
    if args.chunks is not None:
        plans = [p for p in plans if bool(p[1]) == args.chunks]
    laws = {}
    for mode, chunk, sizes in plans:
        label = f"nerf {mode:7s} {f'checkpointed {chunk} rays' if chunk else 'one graph'}, all cells occupied"
        rows = {}
        for s in sizes:
            rows[s] = r = bench.peak(s, mode, True, chunk)
            print(f"{label} {s} px, loss + backward: reference {r['reference'] / MB:.2f} MB ({r['reference_samples']} "
                  f"samples), novel {r['novel'] / MB:.2f} MB ({r['novel_samples']} samples); optimiser step "
                  f"{r['optimiser'] / MB:.1f} MB", flush=True)
        for kind in ("reference", "novel"):
            fixed, per = fit(rows, kind)
            laws[(mode, bool(chunk), kind)] = (fixed, per)
            line = f"{label} {kind:9s}: law {fixed / MB:.1f} MB + {per:.1f} B x samples"
            if len(sizes) > 2:
                last = rows[sizes[-1]]
                pred = fixed + per * last[f"{kind}_samples"]
                line += f"; predicts {pred / MB:.1f} MB at {sizes[-1]} px ({(pred - last[kind]) / last[kind] * 100:+.1f}%)"
            print(line, flush=True)
    print(f"nerf state (parameters, Adan state, EMA): {r['state'] / MB:.1f} MB = "
          f"{r['state'] / memory._nerf_parameters(bench.base.nerf):.1f} B per parameter", flush=True)
    print(f"NERF_LAW = {laws!r}", flush=True)
    for mode in ("mask", "compact") if args.chunks is not True else ():
        young = bench.peak(SIZES[-1], mode, False)
        print(f"nerf {mode:7s} one graph, after one update ({SIZES[-1]} px): reference {young['reference'] / MB:.1f} MB, "
              f"novel {young['novel'] / MB:.1f} MB", flush=True)
    if args.compile:
        part_compiled(args, bench)


def part_compiled(args, bench: NerfBench | None = None):
    """The NeRF step compiled (train.compile=on: the @hot paths through torch.compile) beside eager, one size,
    both occupancy modes, one graph and checkpointed."""
    import time

    bench = bench or NerfBench()
    for mode in ("mask", "compact"):
        for chunk in (0, CHUNK):
            t0 = time.perf_counter()
            eager = bench.peak(16, mode, True, chunk)
            t1 = time.perf_counter()
            compiled = bench.peak(16, mode, True, chunk, compile_on=True)
            t2 = time.perf_counter()
            label = f"checkpointed {chunk} rays" if chunk else "one graph"
            print(f"nerf {mode:7s} {label}, compiled vs eager (16 px, all occupied): reference "
                  f"{compiled['reference'] / MB:.2f} vs {eager['reference'] / MB:.2f} MB, novel "
                  f"{compiled['novel'] / MB:.2f} vs {eager['novel'] / MB:.2f} MB; optimiser step "
                  f"{compiled['optimiser'] / MB:.2f} vs {eager['optimiser'] / MB:.2f} MB "
                  f"(eager {t1 - t0:.0f} s, compiled incl. compilation {t2 - t1:.0f} s)", flush=True)
    eager, compiled = (dmtet_peak(bench, 32, 128, TETS_DIR, compile_on=on) for on in (False, True))
    print(f"dmtet grid 32 at 128 px, compiled vs eager: loss + backward {compiled['step'] / MB:.2f} vs "
          f"{eager['step'] / MB:.2f} MB, optimiser step {compiled['optimiser'] / MB:.2f} vs "
          f"{eager['optimiser'] / MB:.2f} MB", flush=True)


def dmtet_peak(bench: NerfBench, resolution: int, render_size: int, tets_dir: Path, compile_on: bool = False) -> dict:
    """{'step': peak live bytes of a novel-view DMTet step beyond the state, 'state': the tet grid's constants,
    SDF and deformation with their Adan state, 'tets', 'pixels'}; priors off."""
    import copy

    from c123.dmtet import DMTet

    cfg = copy.deepcopy(bench.base)
    cfg.dmtet.tet_resolution, cfg.dmtet.render_size = resolution, render_size
    cfg.train.compile = "on" if compile_on else "off"
    dmtet = DMTet(cfg.dmtet, tets_dir)
    dmtet.init_from_density(bench.field.density, 10.0)
    stage = bench.stages.DmtetStage(bench.field, dmtet, bench.rgba, bench.Priors(), cfg, bench.gen,
                                    torch.device("cpu")).build()
    first = cfg.train.nerf_iters + 5
    _step(stage, first, False)  # the optimiser's state exists before the measured step
    if compile_on:
        _step(stage, first + 2, True)  # both step kinds compiled before they are measured
    peaks, optimiser = [], 0
    for step, reference in ((first + 3, True), (first + 1, False)):
        forward_backward, optimiser = measured_step(stage, step, reference)
        peaks.append(forward_backward)
    state = (memory.training_state_bytes(dmtet, stage.optimizer, [dmtet.grid_verts, dmtet.tets])
             - memory.training_state_bytes(bench.field))  # the field's parameters: counted in the NeRF state
    return {"step": max(peaks), "optimiser": optimiser, "state": state, "tets": int(dmtet.tets.shape[0]),
            "pixels": render_size ** 2}


def part_dmtet(args):
    import numpy as np

    bench = NerfBench()
    points = [(32, 128), (32, 256), (64, 128), (64, 256)]
    rows = {p: dmtet_peak(bench, *p, TETS_DIR) for p in points}
    for p, r in rows.items():
        print(f"dmtet grid {p[0]} ({r['tets']:,} tets, formula {memory.tets_of(p[0]):,}) at {p[1]} px: loss + "
              f"backward {r['step'] / MB:.1f} MB, optimiser step {r['optimiser'] / MB:.1f} MB, state "
              f"{r['state'] / MB:.1f} MB", flush=True)
    fit_rows = [rows[p] for p in points[:3]]
    a = np.array([[1.0, r["pixels"], r["tets"]] for r in fit_rows])
    coef = np.linalg.solve(a, np.array([float(r["step"] + r["state"]) for r in fit_rows]))
    check = rows[points[3]]
    pred = coef @ np.array([1.0, check["pixels"], check["tets"]])
    real = check["step"] + check["state"]
    print(f"dmtet law (state + step): {coef[0] / MB:.1f} MB + {coef[1]:.0f} B x pixels + {coef[2]:.0f} B x tets; "
          f"predicts {pred / MB:.1f} MB at {points[3]} ({(pred - real) / real * 100:+.1f}%); paper (256 grid, 1024 px): "
          f"{(coef @ np.array([1.0, 1024 ** 2, memory.tets_of(256)])) / 1e9:.2f} GB", flush=True)


def part_priors(args):
    for precision, device_type in (("fp16", "cuda"), ("fp32", "cuda"), ("fp32", "cpu")):
        weights = memory.prior_weight_bytes(precision, device_type)
        print(f"weights {precision} on {device_type}: " + "; ".join(
            f"{prior} {sum(parts.values()) / 1e9:.2f} GB (" + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in parts.items())
            + ")" for prior, parts in weights.items()), flush=True)
    for prior, part in memory.PARAMETER_COUNTS:
        counted = memory.parameter_count(prior, part)
        assert counted == memory.PARAMETER_COUNTS[(prior, part)], (prior, part, counted)
    print("parameter counts: as c123.memory.PARAMETER_COUNTS", flush=True)
    for precision, device_type in (("fp16", "cuda"), ("fp32", "cpu")):
        peaks = memory.sds_step_peak(precision, device_type)
        print(f"SDS step of the real priors, {precision} on {device_type} (128 px render; 256 / 512 px inputs): "
              + ", ".join(f"{k} {v / 1e9:.3f} GB" for k, v in peaks.items()) + f"  {peaks}", flush=True)


def part_budget(args):
    from c123.config import PRESETS

    for name, make in PRESETS.items():
        cfg = make()
        for chunk in sorted({0, cfg.nerf.grad_chunk_rays}):  # one graph, and the preset's own chunks
            cfg.nerf.grad_chunk_rays = chunk
            budget = memory.case_budget(cfg)
            label = f"checkpointed {chunk} rays" if chunk else "one graph"
            print(f"[{label}] {budget.line()}")
            print("    " + ", ".join(f"{k} {v / 1e9:.2f}" for k, v in budget.parts.items()) + " GB")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("nerf", "priors", "dmtet", "budget", "compiled"), action="append")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--chunks", type=lambda t: t == "on", default=None, metavar="on|off",
                   help="nerf: only the checkpointed (on) or only the one-graph (off) steps")
    p.add_argument("--models", default=str(Path(tempfile.gettempdir()) / "c123-bench-tiny-models"))
    args = p.parse_args()
    torch.set_num_threads(1)
    models = Path(args.models)
    parts = args.part or ["priors", "nerf", "dmtet", "budget"]
    for name in ("priors", "nerf", "dmtet", "budget", "compiled"):
        if name in parts:
            globals()[f"part_{name}"](args)


if __name__ == "__main__":
    main()
