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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from c123.atomic import atomic_path, write_atomic
from c123.cameras import orbit, reference_camera
from c123.checkpoint import CheckpointIdentity, Resume, find_resumable, input_digest
from c123.config import ReconstructConfig
from c123.config_files import header_lines, to_yaml
from c123.dmtet import DMTet, init_threshold, render_mesh
from c123.errors import InputError
from c123.export import export_textured_mesh, mesh_from_nerf, write_video
from c123.nerf import NeRFField
from c123.preprocess import DEPTH_OFF, ReconstructionInput, check_prompt_length
from c123.prior_views import PRIOR_VIEWS_DIR, draw_prior_views
from c123.priors.concept import Concept, learn_or_load
from c123.priors.loading import Priors, licence_notices, load_priors
from c123.progress import Done, Notice, ProgressFn, Resumed
from c123.provenance import code_version, device_name, resolve_device
from c123.rasterizer import get_rasterizer
from c123.runlog import EVENTS_DIR, RunLog, open_runlog
from c123.schedules import get_variant
from c123.stages import DetectorScore, DmtetStage, NerfStage, reference_view
from c123.training import Loop, RunState, Stage, run_stage
from c123.volume_render import OccupancyGrid, RaySettings, render_nerf


# ---- setting up a run ---------------------------------------------------------------------------
@dataclass
class Run:
    """What `prepare_run` sets up for one input: the device and generator, the loaded and conditioned priors,
    the reference as tensors, the resume state and the training loop."""

    inp: ReconstructionInput
    cfg: ReconstructConfig
    out: Path
    device: torch.device
    gen: torch.Generator
    priors: Priors
    rgba: torch.Tensor
    """[1,4,H,W] in [0,1]."""
    depth: torch.Tensor | None
    """[1,1,H,W] or None."""
    concept: Concept | None
    identity: CheckpointIdentity
    resume: Resume
    state: RunState
    resumed_from: int | None
    runlog: RunLog | None
    loop: Loop
    warnings: list[str]
    notices: list[str] = dataclasses.field(default_factory=list)
    """Lines announced at the start (the licence of weights that carry one), before the resume's notices."""
    prior_views: dict | None = None
    """result.json `prior_views`: what `draw_prior_views` wrote (or reused, or why it skipped); None: not asked."""
    elevation_estimate: dict | None = None
    """result.json `input_camera.estimate`: what `estimate_input_elevation` found; None: the elevation was given."""

    def stage_payload(self, name: str) -> dict | None:
        """The checkpointed state of stage `name` to resume from, or None (a fresh stage)."""
        if self.resume.payload is None or self.state.stage != name:
            return None
        return self.resume.payload["stage"]


@dataclass
class NerfBuild:
    """The NeRF stage and what the hand-over and export read from it."""

    field: NeRFField
    stage: Stage
    occupancy: OccupancyGrid | None


@dataclass
class Result:
    """OUT/result.json (its keys in this order)."""

    case: str | None
    prompt: str
    seed: int
    preset: str
    variant: str
    input_camera: dict
    """The reference camera the run assumed and, for the oracle, the one its image was really taken from:
    `input_camera(cfg)`."""
    config: dict
    config_hash: str
    code_version: str
    device: str
    model_ids: dict[str, str]
    input_digest: str
    switch_iteration: int | None
    detector: dict
    weights: dict[str, list]
    loss: list
    stage_seconds: dict[str, float]
    warnings: list[str]
    notices: list[str]
    preprocessing: dict | None
    concept: dict | None
    sd_prompt: str | None
    resumed_from: int | None
    resumed_across_versions: str | None
    views: list[dict]
    prior_views: dict | None
    outputs: dict[str, str]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def check_prompt(inp: ReconstructionInput, cfg: ReconstructConfig) -> None:
    """Stable Diffusion and the CLIP detector need a prompt; only 3d-only runs without one. A prompt longer than
    MAX_PROMPT characters is refused (the text encoders read 77 tokens)."""
    check_prompt_length(inp.prompt, inp.case_id or "the input")
    if uses_sd(cfg) and not inp.prompt.strip():
        raise InputError(f"empty prompt for {inp.case_id or 'the input'}: Stable Diffusion and the CLIP "
                         "detector need a text prompt; pass --prompt TEXT (or use --variant 3d-only)")


def uses_sd(cfg: ReconstructConfig) -> bool:
    """Whether cfg's variant ever uses Stable Diffusion."""
    return "sd" in get_variant(cfg.schedule.variant).priors


def condition_priors(priors: Priors, rgba: torch.Tensor, prompt: str, cfg: ReconstructConfig, device,
                     concept: Concept | None = None) -> None:
    """Give Zero-1-to-3 the reference on white at its input size, and Stable Diffusion the prompt (naming the
    concept token when there is one)."""
    ref_white = reference_view(rgba, None, cfg.prior.zero123_size, None, device).white
    priors.zero123.set_reference(ref_white.permute(2, 0, 1)[None], reference_camera(cfg.camera).to(device))
    if priors.sd is not None and uses_sd(cfg):
        priors.sd.set_prompt(concept.prompt(prompt) if concept else prompt, ref_azimuth=cfg.camera.ref_azimuth)


def inject_concept(priors: Priors, inp: ReconstructionInput, cfg: ReconstructConfig, device,
                   report: ProgressFn) -> Concept | None:
    """With cfg.concept.enabled: the concept token learned from the reference (or loaded from the cache), added
    to Stable Diffusion before its first use (paper appendix A.2); None otherwise."""
    if not cfg.concept.enabled or not uses_sd(cfg):
        return None
    return learn_or_load(priors.sd, inp.rgba, cfg.concept, cfg.prior.sd_model, cfg.prior.sd_size, device,
                         announce=lambda line: report(Notice(line)))


def prepare_run(inp: ReconstructionInput, cfg: ReconstructConfig, out_dir, priors: Priors | None = None,
                progress: ProgressFn | None = None) -> Run:
    """The run folder and its config.yaml, the seeded generator, the priors (loaded, concept injected,
    conditioned), the reference tensors, and the loop, resumed from what this input and config checkpointed."""
    out = Path(out_dir)
    for sub in ("mesh", "video", "views", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    write_atomic(out / "config.yaml", to_yaml(cfg, header_lines(cfg)))  # the resolved config, rerunnable
    device = resolve_device(cfg.train.device)
    report = progress or (lambda event: None)
    gen = seed_everything(cfg.seed, device)
    warnings: list[str] = list(inp.warnings)  # what preprocessing noticed (a dropped depth map, ...)
    check_prompt(inp, cfg)
    priors = load_priors(cfg, device, priors)
    notices = licence_notices(priors)  # e.g. Stable Zero123's non-commercial licence: once per run, recorded
    for line in notices:
        report(Notice(line))
    estimate = estimate_input_elevation(priors, inp, cfg, device, report)  # sets camera.ref_polar when asked
    if estimate is not None:
        write_atomic(out / "config.yaml", to_yaml(cfg, header_lines(cfg)))  # the resolved config, with the estimate
        if estimate["warning"]:
            warnings.append(estimate["warning"])
    depth_np = inp.depth  # a missing map was estimated in preprocessing (c123.preprocess.prepare_input)
    if depth_np is None and cfg.loss.depth > 0 and not any(w.endswith(DEPTH_OFF) for w in warnings):
        warnings.append(f"no depth map and no depth model configured: {DEPTH_OFF}")  # unless one was dropped
    if cfg.concept.enabled and not uses_sd(cfg):
        warnings.append(f"concept injection is on but variant {cfg.schedule.variant} never uses Stable Diffusion: "
                        "no concept was learned")
    rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
    depth = None if depth_np is None else torch.from_numpy(depth_np).float()[None, None]
    concept = inject_concept(priors, inp, cfg, device, report)  # before Stable Diffusion is first used
    condition_priors(priors, rgba, inp.prompt, cfg, device, concept)
    if priors.sd is not None and uses_sd(cfg) and getattr(priors.sd, "prompt_cut", None):
        warnings.append(priors.sd.prompt_cut)

    identity = CheckpointIdentity(input_digest(inp.rgba, depth_np, inp.prompt), cfg.hash(), code_version())
    resume = find_resumable(out / "checkpoints", identity, device)
    for notice in resume.notices:
        report(Notice(notice))
    state = RunState.start(cfg) if resume.payload is None else RunState.from_dict(resume.payload["state"])
    state.restore_rng(gen)
    resumed_from = None if resume.payload is None else state.step
    if resumed_from is not None:
        report(Resumed(state.step, cfg.train.nerf_iters + cfg.train.dmtet_iters))
    runlog = open_runlog(out, cfg, device, resumed_from)  # TensorBoard events in OUT/tb (None: log.tensorboard off)
    loop = Loop(cfg, state, gen, out / "checkpoints", identity, report, runlog)
    return Run(inp, cfg, out, device, gen, priors, rgba, depth, concept, identity, resume, state, resumed_from,
               runlog, loop, warnings, notices, elevation_estimate=estimate)


def estimate_input_elevation(priors: Priors, inp: ReconstructionInput, cfg: ReconstructConfig, device,
                             report: ProgressFn) -> dict | None:
    """With camera.estimate_elevation: the input view's elevation estimated from the 3D prior's own views
    (c123/elevation.py, One-2-3-45's method), written into camera.ref_polar (90 - estimate; a low-confidence
    estimate falls back to elevation 0 with a warning) and returned for result.json; None when it is off.

    The views are drawn at the prior's own field of view (`view_fovy`: Zero-1-to-3's 49.1; the oracle renders at
    camera.fovy) from a generator of their own, inside `fork_rng`: training draws what it would without them.
    Deterministic for the same input, config and code, so a resumed run estimates the same again."""
    if not cfg.camera.estimate_elevation:
        return None
    from c123.elevation import estimate_elevation
    from c123.prior_views import derived_seed, draws_aside

    prior = priors.zero123
    if prior is None or not callable(getattr(prior, "sample", None)):
        raise InputError(f"camera.estimate_elevation needs a 3D prior that draws views (sample()); "
                         f"{getattr(prior, 'model_id', 'none')} does not: give the elevation (--elevation DEG)")
    fovy = float(getattr(prior, "view_fovy", None) or cfg.camera.fovy)
    rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
    white = reference_view(rgba, None, cfg.prior.zero123_size, None, device).white.permute(2, 0, 1)[None]
    device = torch.device(device)
    tic = time.perf_counter()
    with draws_aside(device):
        generator = torch.Generator(device=device).manual_seed(derived_seed("elevation estimate", cfg.seed))
        found = estimate_elevation(prior, white, fovy=fovy, radius=cfg.camera.ref_radius, generator=generator)
    cfg.camera.ref_polar = 90.0 - float(found.elevation_deg)
    warning = None if found.warning is None else f"elevation estimate: {found.warning}"
    report(Notice(f"input camera elevation estimated: {found.elevation_deg:g} (confidence {found.confidence:.2f})"
                  + ("" if warning is None else f"; {warning}")))
    return {"elevation": float(found.elevation_deg), "confidence": float(found.confidence),
            "fell_back": found.fell_back, "warning": warning, "fovy": fovy,
            "raw_elevation": found.details.get("raw_elevation"), "seconds": time.perf_counter() - tic}


def record_prior_views(run: Run) -> dict:
    """Before training: the 3D prior's own views at the boundary detector's azimuths in OUT/prior_views/ (reused
    when a run of the same input and config wrote them), kept in `run.prior_views` for result.json; drawn from
    generators of their own, so training is the same with or without them (c123/prior_views.py)."""
    run.prior_views = draw_prior_views(run.priors.zero123, run.cfg, run.out, run.device,
                                       input_digest=run.identity.input_digest,
                                       announce=lambda line: run.loop.progress(Notice(line)))
    return run.prior_views


# ---- the stages and the hand-over ------------------------------------------------------------------
def build_nerf_stage(rgba: torch.Tensor, depth: torch.Tensor | None, priors: Priors, prompt: str,
                     cfg: ReconstructConfig, gen: torch.Generator, device) -> NerfBuild:
    """A fresh NeRF field and its stage (Stages 1 and 2: the 3D prior, then the dynamic prior), with the CLIP
    boundary detector when the variant switches by it."""
    field_ = NeRFField(cfg.nerf).to(device)
    score = DetectorScore(priors, prompt, cfg, device) if get_variant(cfg.schedule.variant).switch == "detector" \
        else None
    parts = NerfStage(field_, rgba, depth, priors, cfg, gen, device, score)
    return NerfBuild(field_, parts.build(), parts.occupancy)


def hand_over(nerf: NerfBuild) -> None:
    """The DMTet stage starts from the averaged NeRF (the official df.pth)."""
    nerf.stage.ema.copy_to(nerf.field)


def build_dmtet_stage(nerf: NerfBuild, rgba: torch.Tensor, priors: Priors, cfg: ReconstructConfig,
                      gen: torch.Generator, device, *, init: bool = True) -> tuple[DMTet, Stage]:
    """The tet grid and its stage (Stage 3: DMTet under the same dynamic prior); with `init`, the grid's SDF is
    initialised from the NeRF's density (False: a resumed stage loads it)."""
    dmtet = DMTet(cfg.dmtet).to(device)
    stage = DmtetStage(nerf.field, dmtet, rgba, priors, cfg, gen, device).build()
    if init:
        nerf.field.set_level_ratio(1.0)  # init_tet queries the whole field
        dmtet.init_from_density(nerf.field.density, dmtet_threshold(nerf.field, nerf.occupancy, cfg, gen, device))
    return dmtet, stage


# ---- the reconstruction ------------------------------------------------------------------------
def reconstruct(inp: ReconstructionInput, cfg: ReconstructConfig, out_dir, priors: Priors | None = None,
                progress: ProgressFn | None = None) -> dict:
    """Run both stages and the export for one input; returns (and writes) OUT/result.json. Both stages resume
    from their checkpoints."""
    run = prepare_run(inp, cfg, out_dir, priors, progress)
    record_prior_views(run)
    nerf = build_nerf_stage(run.rgba, run.depth, run.priors, inp.prompt, cfg, run.gen, run.device)
    in_dmtet = run.state.stage == "dmtet"
    if (payload := run.stage_payload("nerf")) is not None:
        nerf.stage.load_state_dict(payload)
    if not in_dmtet:
        run_stage(nerf.stage, run.loop)
        if cfg.train.dmtet_iters > 0:
            hand_over(nerf)
    dmtet = None
    if cfg.train.dmtet_iters > 0:
        dmtet, stage = build_dmtet_stage(nerf, run.rgba, run.priors, cfg, run.gen, run.device, init=not in_dmtet)
        if (payload := run.stage_payload("dmtet")) is not None:
            stage.load_state_dict(payload)
        run_stage(stage, run.loop)

    # Export: what the official writes comes from the live (not averaged) models
    tic = time.perf_counter()
    outputs, views = export(nerf.field, dmtet, inp, cfg, run.out, run.device)
    run.state.seconds["export"] = time.perf_counter() - tic
    return finish(run, outputs, views)


def finish(run: Run, outputs: dict[str, str], views: list[dict]) -> dict:
    """Write OUT/result.json, close the run log and report the end."""
    cfg, state, priors = run.cfg, run.state, run.priors
    outputs["config"] = "config.yaml"
    if run.runlog is not None:
        outputs["events"] = EVENTS_DIR
    if run.prior_views is not None and run.prior_views.get("views"):
        outputs["prior_views"] = PRIOR_VIEWS_DIR
    result = Result(
        run.inp.case_id, run.inp.prompt, cfg.seed, cfg.preset, cfg.schedule.variant,
        input_camera(cfg, run.elevation_estimate),
        cfg.to_dict(), cfg.hash(), code_version(), device_name(run.device), priors.model_ids,
        run.identity.input_digest, state.switch, state.detector,
        {k: state.history[k] for k in ("iterations", "w3d", "w2d")}, state.history["loss"], state.seconds,
        run.warnings, run.notices + run.resume.notices,
        dataclasses.asdict(run.inp.preprocessing) if run.inp.preprocessing else None,
        run.concept.summary() if run.concept else None,
        priors.sd.prompt if priors.sd is not None and uses_sd(cfg) else None,
        run.resumed_from, run.resume.from_version, views, run.prior_views, outputs).to_dict()
    write_atomic(run.out / "result.json", json.dumps(result, indent=2, default=str))
    if run.runlog is not None:
        run.runlog.close()
    last = {k: state.history[k][-1] for k in ("w3d", "w2d") if state.history[k]}
    run.loop.progress(Done(run.loop.total, run.loop.total, last.get("w3d"), last.get("w2d"),
                         state.detector["S"][-1] if state.detector.get("S") else None, state.switch))
    return result


def input_camera(cfg: ReconstructConfig, estimate: dict | None = None) -> dict:
    """result.json's record of the input camera: {elevation, azimuth} the run assumed (elevation = 90 -
    camera.ref_polar, degrees) and {true_elevation, true_azimuth}, the camera the oracle knows the image was
    rendered from (prior.oracle_elevation / oracle_azimuth, else the assumed one); null without the oracle,
    where only the image knows. `estimate`: how the elevation was estimated (`estimate_input_elevation`), else
    null (it was given or the config's)."""
    c, p = cfg.camera, cfg.prior
    elevation, oracle = 90.0 - c.ref_polar, bool(p.oracle_scene)
    return {"elevation": elevation, "azimuth": c.ref_azimuth,
            "true_elevation": (elevation if p.oracle_elevation is None else p.oracle_elevation) if oracle else None,
            "true_azimuth": (c.ref_azimuth if p.oracle_azimuth is None else p.oracle_azimuth) if oracle else None,
            "estimate": estimate}


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
                field_, cams, s, s, RaySettings(shading, cfg.nerf.num_samples, cfg.nerf.num_importance,
                                                perturb=False), bg_color=white)

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
        turn = turntable_cameras(cfg).to(device)
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


def turntable_cameras(cfg: ReconstructConfig):
    """The turntable's train.video_frames cameras: azimuth 0 to 360 at the reference camera's polar angle and
    radius, as the official test loader circles at --default_polar (nerf/provider.py, type 'test')."""
    c = cfg.camera
    return orbit(cfg.train.video_frames, polar=c.ref_polar, radius=c.ref_radius, fovy=c.fovy)


def _rgba(o) -> np.ndarray:
    return _to_uint8(torch.cat([o.rgb, o.opacity], -1))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)

