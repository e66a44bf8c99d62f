"""One image + prompt -> a consistent textured mesh: the Consistent123 main path, top to bottom.

    reference view -> NeRF stage (Zero-1-to-3 SDS + reference losses; the CLIP boundary detector decides
    when structure is done; then the dynamic prior mixes in Stable Diffusion) -> hand-over (the averaged
    NeRF initialises the tet grid) -> DMTet stage (same dynamic prior, rasterised) -> export (mesh,
    turntable, orbit views) -> result.json

Both stages run the one loop of `c123.training`; each checkpoints into OUT/checkpoints, and a rerun with
the same input and config resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from c123.atomic import atomic_path, write_atomic
from c123.cameras import orbit, reference_camera
from c123.checkpoint import CheckpointIdentity, find_resumable, input_digest
from c123.config import ORACLE_FROM_CASE, ReconstructConfig
from c123.config_files import header_lines, to_yaml
from c123.dmtet import DMTet, init_threshold, render_mesh
from c123.errors import C123Error, InputError
from c123.export import export_textured_mesh, mesh_from_nerf, write_video
from c123.nerf import NeRFField
from c123.preprocess import ReconstructionInput
from c123.provenance import code_version, device_name, resolve_device
from c123.rasterizer import get_rasterizer
from c123.runlog import EVENTS_DIR, open_runlog
from c123.schedules import get_variant
from c123.stages import detector_score, dmtet_stage, nerf_stage, reference_view
from c123.training import Loop, ProgressFn, RunState, run_stage
from c123.volume_render import OccupancyGrid, render_nerf


# ---- priors: loaded once, reused across cases (the benchmark's actors keep them) -----------------
@dataclass
class Priors:
    """The loaded models: Zero-1-to-3 (or the oracle), Stable Diffusion, CLIP; None where not needed."""

    zero123: object | None = None
    sd: object | None = None
    clip: object | None = None
    model_ids: dict = field(default_factory=dict)


def needed_priors(cfg: ReconstructConfig) -> set[str]:
    """Which models a config uses: 3d-only needs neither SD nor the detector's CLIP."""
    variant = get_variant(cfg.schedule.variant)
    need = {"zero123"}
    if variant.switch != "never":
        need.add("sd")
    if variant.switch == "detector":
        need.add("clip")
    return need


def load_priors(cfg: ReconstructConfig, device, priors: Priors | None = None) -> Priors:
    """Load what `cfg` needs (and is not already in `priors`) through the offline-safe weights path."""
    from c123.priors.weights import quiet_loading, resolve

    quiet_loading()
    priors = priors or Priors()
    need = needed_priors(cfg)
    from c123.priors.tiny import ensure_tiny_models
    ensure_tiny_models(cfg)
    if "zero123" in need and priors.zero123 is None:
        if cfg.prior.oracle_scene:
            from c123.priors.oracle import OraclePrior
            from c123.synthetic import get_scene
            if cfg.prior.oracle_scene == ORACLE_FROM_CASE:
                raise C123Error("prior.oracle_scene='case' takes the scene from a synthetic benchmark case: run "
                                "`c123 evaluate synthetic --preset verify`, or name the scene of the input, "
                                "e.g. --set prior.oracle_scene=toy")
            priors.zero123 = OraclePrior(get_scene(cfg.prior.oracle_scene))
            priors.model_ids["zero123"] = priors.zero123.model_id
        else:
            from c123.priors.zero123 import Zero123Prior, weight_preference
            path = resolve(cfg.prior.zero123_model, "Zero-1-to-3 (the 3D prior)",
                           variants=weight_preference(cfg.prior.zero123_variant), cache_dir=cfg.prior.model_cache)
            priors.zero123 = Zero123Prior.from_pretrained(path, cfg.prior, device)
            priors.model_ids["zero123"] = cfg.prior.zero123_model
        priors.model_ids["zero123_variant"] = priors.zero123.variant_loaded
    if "sd" in need and priors.sd is None:
        from c123.priors.stable_diffusion import StableDiffusionPrior
        path = resolve(cfg.prior.sd_model, "Stable Diffusion 2.1 base (the 2D prior)", cache_dir=cfg.prior.model_cache)
        priors.sd = StableDiffusionPrior.from_pretrained(path, cfg.prior, device)
        priors.model_ids["stable_diffusion"] = cfg.prior.sd_model
        priors.model_ids["stable_diffusion_variant"] = priors.sd.variant_loaded
    if "clip" in need and priors.clip is None:
        from c123.priors.clip import ClipModel
        path = resolve(cfg.prior.clip_model, "CLIP (the boundary detector)", cache_dir=cfg.prior.model_cache)
        priors.clip = ClipModel.from_pretrained(path, device, precision=cfg.prior.precision)  # fp16 on CUDA as -O
        priors.model_ids["clip"] = cfg.prior.clip_model
    return priors


def check_prompt(inp: ReconstructionInput, cfg: ReconstructConfig) -> None:
    """Stable Diffusion and the CLIP detector need a prompt; only 3d-only runs without one."""
    if "sd" in needed_priors(cfg) and not inp.prompt.strip():
        raise InputError(f"empty prompt for {inp.case_id or 'the input'}: Stable Diffusion and the CLIP "
                         "detector need a text prompt; pass --prompt TEXT (or use --variant 3d-only)")


def condition_priors(priors: Priors, rgba: torch.Tensor, prompt: str, cfg: ReconstructConfig, device,
                     concept=None) -> None:
    """Give Zero-1-to-3 the reference on white at its input size, and Stable Diffusion the prompt (naming the
    concept token when there is one)."""
    ref_white = reference_view(rgba, None, cfg.prior.zero123_size, None, device).white
    priors.zero123.set_reference(ref_white.permute(2, 0, 1)[None], reference_camera(cfg.camera).to(device))
    if priors.sd is not None and "sd" in needed_priors(cfg):
        priors.sd.set_prompt(concept.prompt(prompt) if concept else prompt, ref_azimuth=cfg.camera.ref_azimuth)


def inject_concept(priors: Priors, inp: ReconstructionInput, cfg: ReconstructConfig, device, report: ProgressFn):
    """With cfg.concept.enabled: the concept token learned from the reference (or loaded from the cache), added
    to Stable Diffusion before its first use (paper appendix A.2); None otherwise."""
    if not cfg.concept.enabled or "sd" not in needed_priors(cfg):
        return None
    from c123.priors.concept import learn_or_load

    return learn_or_load(priors.sd, inp.rgba, cfg.concept, cfg.prior.sd_model, cfg.prior.sd_size, device,
                         announce=lambda line: report({"stage": "notice", "message": line}))


# ---- the reconstruction ------------------------------------------------------------------------
def reconstruct(inp: ReconstructionInput, cfg: ReconstructConfig, out_dir, priors: Priors | None = None,
                progress: ProgressFn | None = None) -> dict:
    """Run both stages and the export for one input; returns (and writes) OUT/result.json."""
    out = Path(out_dir)
    for sub in ("mesh", "video", "views", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", to_yaml(cfg, header_lines(cfg)))  # the resolved config, rerunnable
    device = resolve_device(cfg.train.device)
    report = progress or (lambda info: None)
    gen = seed_everything(cfg.seed, device)
    warnings: list[str] = list(inp.warnings)  # what preprocessing noticed (a dropped depth map, ...)
    check_prompt(inp, cfg)
    priors = load_priors(cfg, device, priors)

    depth_np = inp.depth  # a missing map was estimated in preprocessing (c123.preprocess.prepare_input)
    if depth_np is None and cfg.loss.depth > 0:
        warnings.append("no depth map and no depth model configured: the depth loss is off")
    if cfg.concept.enabled and "sd" not in needed_priors(cfg):
        warnings.append(f"concept injection is on but variant {cfg.schedule.variant} never uses Stable Diffusion: "
                        "no concept was learned")
    rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
    depth = None if depth_np is None else torch.from_numpy(depth_np).float()[None, None]
    concept = inject_concept(priors, inp, cfg, device, report)  # before Stable Diffusion is first used
    condition_priors(priors, rgba, inp.prompt, cfg, device, concept)

    # Resume only what this input and config wrote
    identity = CheckpointIdentity(input_digest(inp.rgba, depth_np, inp.prompt), cfg.hash(), code_version())
    resume = find_resumable(out / "checkpoints", identity, device)
    for notice in resume.notices:
        report({"stage": "notice", "message": notice})
    state = RunState.start(cfg) if resume.payload is None else RunState.from_dict(resume.payload["state"])
    state.restore_rng(gen)
    resumed_from = None if resume.payload is None else state.step
    if resumed_from is not None:
        report({"stage": "resume", "step": state.step, "total": cfg.train.nerf_iters + cfg.train.dmtet_iters})
    runlog = open_runlog(out, cfg, device, resumed_from)  # TensorBoard events in OUT/tb (None: log.tensorboard off)
    loop = Loop(cfg, state, gen, out / "checkpoints", identity, report, runlog)

    # ---- Stages 1 and 2: NeRF under the 3D prior, then the dynamic prior --------------------------
    field_ = NeRFField(cfg.nerf).to(device)
    score = (detector_score(priors, inp.prompt, cfg, device)
             if get_variant(cfg.schedule.variant).switch == "detector" else None)
    nerf, occupancy = nerf_stage(field_, rgba, depth, priors, cfg, gen, device, score)
    in_dmtet = state.stage == "dmtet"
    if resume.payload is not None and not in_dmtet:
        nerf.load_state_dict(resume.payload["stage"])
    if not in_dmtet:
        run_stage(nerf, loop)
        if cfg.train.dmtet_iters > 0:
            nerf.ema.copy_to(field_)  # the DMTet stage starts from the averaged NeRF (the official df.pth)

    # ---- Stage 3: DMTet refinement under the same dynamic prior ---------------------------------
    dmtet = None
    if cfg.train.dmtet_iters > 0:
        dmtet = DMTet(cfg.dmtet).to(device)
        stage = dmtet_stage(field_, dmtet, rgba, priors, cfg, gen, device)
        if in_dmtet:
            stage.load_state_dict(resume.payload["stage"])
        else:
            field_.set_level_ratio(1.0)  # init_tet queries the whole field
            dmtet.init_from_density(field_.density, dmtet_threshold(field_, occupancy, cfg, gen, device))
        run_stage(stage, loop)

    # ---- Export: what the official writes comes from the live (not averaged) models --------------
    tic = time.perf_counter()
    outputs, views = export(field_, dmtet, inp, cfg, out, device)
    state.seconds["export"] = time.perf_counter() - tic
    outputs["config"] = "config.yaml"
    if runlog is not None:
        outputs["events"] = EVENTS_DIR

    result = {
        "case": inp.case_id, "prompt": inp.prompt, "seed": cfg.seed, "preset": cfg.preset,
        "variant": cfg.schedule.variant, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "code_version": code_version(), "device": device_name(device), "model_ids": priors.model_ids,
        "input_digest": identity.input_digest, "switch_iteration": state.switch, "detector": state.detector,
        "weights": {k: state.history[k] for k in ("iterations", "w3d", "w2d")}, "loss": state.history["loss"],
        "stage_seconds": state.seconds, "warnings": warnings, "notices": resume.notices,
        "preprocessing": dataclasses.asdict(inp.preprocessing) if inp.preprocessing else None,
        "concept": concept.summary() if concept else None,
        "sd_prompt": priors.sd.prompt if priors.sd is not None and "sd" in needed_priors(cfg) else None,
        "resumed_from": resumed_from, "resumed_across_versions": resume.from_version,
        "views": views, "outputs": outputs,
    }
    write_atomic(out / "result.json", json.dumps(result, indent=2, default=str))
    if runlog is not None:
        runlog.close()
    last = {k: state.history[k][-1] for k in ("w3d", "w2d") if state.history[k]}
    report({"stage": "done", "step": loop.total, "total": loop.total, **last,
            "S": state.detector["S"][-1] if state.detector.get("S") else None, "switch": state.switch})
    return result


def seed_everything(seed: int, device="cpu") -> torch.Generator:
    """Seed Python, NumPy and torch (utils.py seed_everything) and return the run's own generator, on the compute
    device (its draws need no host-to-device copy, which would wait for the device)."""
    random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
    return torch.Generator(device=device).manual_seed(seed)


def dmtet_threshold(field_: NeRFField, occupancy: OccupancyGrid | None, cfg: ReconstructConfig,
                    gen: torch.Generator, device) -> float:
    """init_tet's min(mean density, 10): the mean of the NeRF stage's density grid (cuda_ray keeps it), or
    without a grid one probe of the field."""
    if occupancy is None:
        return init_threshold(field_.density, cfg.nerf.bound, cfg.dmtet, gen, device)
    return min(occupancy.mean_density, cfg.dmtet.init_density_threshold)


# ---- export --------------------------------------------------------------------------------------
def export(field_: NeRFField, dmtet: DMTet | None, inp: ReconstructionInput, cfg: ReconstructConfig, out: Path,
           device) -> tuple[dict, list[dict]]:
    """Orbit views (what the metrics read), the reference render, turntables and the textured mesh."""
    s = cfg.train.eval_size
    white = torch.ones(3, device=device)
    albedo = lambda points: field_(points)[1]  # noqa: E731 - the NeRF's colour network is the texture
    with torch.no_grad():
        if dmtet is not None:
            mesh = dmtet.get_mesh()
            rasterizer = get_rasterizer(cfg.dmtet.backend, device)
            render = lambda cams, shading="albedo": render_mesh(  # noqa: E731
                mesh, albedo, cams, s, s, shading=shading, bg_color=white, rasterizer=rasterizer)
        else:
            render = lambda cams, shading="albedo": render_nerf(  # noqa: E731
                field_, cams, s, s, shading=shading, perturb=False, bg_color=white,
                num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance)

        views = []
        view_cams = orbit(cfg.train.eval_views, polar=cfg.camera.ref_polar if cfg.train.eval_at_ref_polar else 90.0,
                          radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
        for i in range(len(view_cams)):
            _save_png(_rgba(render(view_cams[i]))[0], out / "views" / f"view_{i:03d}.png")
            views.append({"file": f"views/view_{i:03d}.png", "azimuth": float(view_cams.azimuth[i]),
                          "polar": float(view_cams.polar[i])})
        _save_png(_rgba(render(reference_camera(cfg.camera).to(device)))[0], out / "views" / "ref_render.png")
        rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
        ref = reference_view(rgba, None, s, None, device)
        _save_png(_to_uint8(torch.cat([ref.white, ref.mask], -1)), out / "reference.png")
        turn = orbit(cfg.train.video_frames, radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
        write_video([_to_uint8(render(turn[i]).rgb)[0] for i in range(len(turn))],
                    out / "video" / "rgb.mp4", out / "video" / "rgb.gif")
        write_video([_to_uint8(render(turn[i], "normal").rgb)[0] for i in range(len(turn))], out / "video" / "normal.mp4")
    outputs = {"reference": "reference.png", "ref_render": "views/ref_render.png",
               "video_rgb": "video/rgb.mp4", "gif_rgb": "video/rgb.gif", "video_normal": "video/normal.mp4"}
    if cfg.train.export_mesh:
        with torch.no_grad():
            if dmtet is not None:
                verts, faces = mesh.verts, mesh.faces
            else:
                verts, faces = mesh_from_nerf(field_, resolution=128, threshold=cfg.dmtet.init_density_threshold)
            export_textured_mesh(verts.detach(), faces, albedo, out / "mesh", cfg.train.texture_size, name="mesh")
        outputs.update(mesh_obj="mesh/mesh.obj", mesh_glb="mesh/mesh.glb")
    return outputs, views


def _rgba(o) -> np.ndarray:
    return _to_uint8(torch.cat([o.rgb, o.opacity], -1))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)

