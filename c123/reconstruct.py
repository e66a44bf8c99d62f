"""One image + prompt -> a consistent textured mesh: the Consistent123 main path, top to bottom.

    reference view -> NeRF stage (Zero-1-to-3 SDS + reference losses; the CLIP boundary detector decides
    when structure is done; then the dynamic prior mixes in Stable Diffusion) -> DMTet stage (same
    dynamic prior, rasterised) -> export (mesh, turntable, orbit views) -> result.json

Each stage checkpoints into OUT/checkpoints so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from c123 import losses
from c123.atomic import atomic_path, write_atomic
from c123.cameras import Cameras, orbit, reference_camera, sample_novel_cameras
from c123.config import ReconstructConfig
from c123.dmtet import DMTet, mesh_laplacian, mesh_normal_consistency, render_mesh
from c123.errors import InputError
from c123.export import export_textured_mesh, mesh_from_nerf, write_video
from c123.nerf import NeRFField
from c123.preprocess import ReconstructionInput
from c123.provenance import code_version, device_name, resolve_device
from c123.rasterizer import get_rasterizer
from c123.schedules import BoundaryDetector, fixed_switch_step, get_variant, is_check_step, prior_weights
from c123.volume_render import OccupancyGrid, render_nerf

ProgressFn = Callable[[dict], None]


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
    from c123.priors.weights import resolve

    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()  # per-shard bars would drown the run's own progress
    diffusers.utils.logging.disable_progress_bar()
    priors = priors or Priors()
    need = needed_priors(cfg)
    if cfg.preset == "tiny":
        from c123.priors.tiny import write_tiny_models
        write_tiny_models(Path(cfg.prior.zero123_model).expanduser().parent)
    if "zero123" in need and priors.zero123 is None:
        if cfg.prior.oracle_scene:
            from c123.priors.oracle import OraclePrior
            from c123.synthetic import get_scene
            priors.zero123 = OraclePrior(get_scene(cfg.prior.oracle_scene))
            priors.model_ids["zero123"] = priors.zero123.model_id
        else:
            from c123.priors.zero123 import Zero123Prior
            path = resolve(cfg.prior.zero123_model, "Zero-1-to-3 (the 3D prior)")
            priors.zero123 = Zero123Prior.from_pretrained(path, cfg.prior, device)
            priors.model_ids["zero123"] = cfg.prior.zero123_model
    if "sd" in need and priors.sd is None:
        from c123.priors.stable_diffusion import StableDiffusionPrior
        path = resolve(cfg.prior.sd_model, "Stable Diffusion 2.1 base (the 2D prior)")
        priors.sd = StableDiffusionPrior.from_pretrained(path, cfg.prior, device)
        priors.model_ids["stable_diffusion"] = cfg.prior.sd_model
    if "clip" in need and priors.clip is None:
        from c123.priors.clip import ClipModel
        path = resolve(cfg.prior.clip_model, "CLIP (the boundary detector)")
        priors.clip = ClipModel.from_pretrained(path, device)
        priors.model_ids["clip"] = cfg.prior.clip_model
    return priors


def check_prompt(inp: ReconstructionInput, cfg: ReconstructConfig) -> None:
    """Stable Diffusion and the CLIP detector need a prompt; only 3d-only runs without one."""
    if "sd" in needed_priors(cfg) and not inp.prompt.strip():
        raise InputError(f"empty prompt for {inp.case_id or 'the input'}: Stable Diffusion and the CLIP "
                         "detector need a text prompt; pass --prompt TEXT (or use --variant 3d-only)")


# ---- the reference view ------------------------------------------------------------------------
@dataclass
class Reference:
    """The input as tensors at one render size: rgb and mask [H,W,3|1], depth [H,W,1] or None."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None


def reference_at(inp: ReconstructionInput, size: int, device) -> Reference:
    """Resize the preprocessed RGBA (and depth) to `size`; colour premultiplied so edges do not bleed."""
    rgba = torch.from_numpy(inp.rgba).float().div(255).permute(2, 0, 1)[None]
    alpha = rgba[:, 3:]
    premult = F.interpolate(torch.cat([rgba[:, :3] * alpha, alpha], 1), size=(size, size), mode="area")
    mask = premult[:, 3:]
    rgb = premult[:, :3] / mask.clamp(min=1e-6)
    depth = None
    if inp.depth is not None:
        depth = F.interpolate(torch.from_numpy(inp.depth).float()[None, None], size=(size, size), mode="area")
        depth = depth[0].permute(1, 2, 0).to(device)
    return Reference(rgb[0].permute(1, 2, 0).clamp(0, 1).to(device), mask[0].permute(1, 2, 0).to(device), depth)


# ---- small helpers of the loop -----------------------------------------------------------------
def make_optimizer(params: list[dict], cfg: ReconstructConfig) -> torch.optim.Optimizer:
    """Adan as in the authors' code (lr 5e-3), or Adam as the paper states."""
    if cfg.train.optimizer == "adan":
        from pytorch_optimizer import Adan
        return Adan(params, lr=cfg.train.lr, betas=(0.98, 0.92, 0.99), weight_decay=0.0)
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.train.lr, betas=(0.9, 0.99), eps=1e-15)
    raise InputError(f"unknown optimizer '{cfg.train.optimizer}': use train.optimizer=adan or adam")


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """Exponential moving average of the parameters, used for every evaluation render."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)


def novel_view_style(cfg: ReconstructConfig, gen: torch.Generator, cams: Cameras, device) -> dict:
    """Shading, light and background of a novel view: lambertian 80% / textureless 20%, random ambient."""
    u = torch.rand(5, generator=gen).tolist()
    shading = "lambertian" if u[0] < cfg.train.lambertian_prob else "textureless"
    lo, hi = cfg.train.ambient_range
    if shading == "lambertian" and lo >= 1.0:
        shading = "albedo"  # full ambient light is plain albedo, and needs no normals
    eye = cams.c2w[:, :3, 3].to(device)
    light = F.normalize(eye + torch.randn(eye.shape, generator=gen).to(device), dim=-1)
    bg = (torch.tensor(u[2:5], device=device) if cfg.train.novel_background == "random"
          else torch.ones(3, device=device))
    return dict(shading=shading, ambient=lo + (hi - lo) * u[1], light_dir=light, bg_color=bg)


def prior_loss(priors: Priors, images: torch.Tensor, cams: Cameras, w3d: float, w2d: float,
               t_range: tuple[float, float], step_ratio: float) -> torch.Tensor:
    """w3D * L_3D + w2D * L_2D; a prior whose weight is 0 is not evaluated at all."""
    total = images.new_zeros(())
    if w3d > 0 and priors.zero123 is not None:
        total = total + w3d * priors.zero123.loss(images, cams, t_range=t_range, step_ratio=step_ratio)
    if w2d > 0 and priors.sd is not None:
        total = total + w2d * priors.sd.loss(images, cams, t_range=t_range, step_ratio=step_ratio)
    return total


@torch.no_grad()
def clip_score(field, priors: Priors, prompt: str, cfg: ReconstructConfig, device) -> float:
    """S^k: mean CLIP cosine between the prompt and M views at elevation 0 (METHOD.md section 4)."""
    cams = orbit(cfg.schedule.num_views, radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
    size = cfg.prior.clip_size
    out = render_nerf(field, cams, size, size, shading="albedo", perturb=False,
                      num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance)
    images = out.rgb.permute(0, 3, 1, 2)
    sims = priors.clip.image_embeds(images) @ priors.clip.text_embeds([prompt]).T
    return float(sims.mean())


def _save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _write_json(data: dict, path: Path) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


# ---- the reconstruction ------------------------------------------------------------------------
def reconstruct(inp: ReconstructionInput, cfg: ReconstructConfig, out_dir, priors: Priors | None = None,
                progress: ProgressFn | None = None) -> dict:
    """Run both stages and the export for one input; returns (and writes) OUT/result.json."""
    out = Path(out_dir)
    ckpt_dir = out / "checkpoints"
    for sub in ("mesh", "video", "views", "checkpoints"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed), random.seed(cfg.seed), np.random.seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    report = progress or (lambda info: None)
    warnings: list[str] = []
    needs = needed_priors(cfg)
    check_prompt(inp, cfg)
    priors = load_priors(cfg, device, priors)

    # Reference view, at the NeRF reference size; the depth loss needs a depth map
    ref_cam = reference_camera(cfg.camera).to(device)
    ref_size = int(round(cfg.train.nerf_size * cfg.train.ref_scale))
    if inp.depth is None and cfg.prior.depth_model:
        from c123.preprocess import estimate_depth
        inp.depth = estimate_depth(inp.rgba, cfg.prior.depth_model, device)
    if inp.depth is None and cfg.loss.depth > 0:
        warnings.append("no depth map and no depth model configured: the depth loss is off")
    depth_weight = cfg.loss.depth if inp.depth is not None else 0.0
    ref = reference_at(inp, ref_size, device)
    z123_size = cfg.prior.zero123_size
    ref_white = reference_at(inp, z123_size, device)
    ref_white = (ref_white.rgb * ref_white.mask + (1 - ref_white.mask)).permute(2, 0, 1)[None]
    priors.zero123.set_reference(ref_white, ref_cam)
    if priors.sd is not None and "sd" in needs:
        priors.sd.set_prompt(inp.prompt)

    nerf_iters, dmtet_iters = cfg.train.nerf_iters, cfg.train.dmtet_iters
    total_iters = nerf_iters + dmtet_iters
    detector = BoundaryDetector(cfg.schedule)
    uses_detector = get_variant(cfg.schedule.variant).switch == "detector"
    switch = fixed_switch_step(cfg.schedule)
    history = {"iterations": [], "w3d": [], "w2d": []}
    seconds = {"nerf": 0.0, "dmtet": 0.0, "export": 0.0}
    log_every = max(1, total_iters // 200)

    field_ = NeRFField(cfg.nerf).to(device)
    ema = make_ema(field_, cfg.train.ema_decay)
    opt = make_optimizer([
        {"params": list(field_.grid_parameters()), "lr": cfg.train.lr * cfg.train.grid_lr_scale},
        {"params": list(field_.other_parameters()), "lr": cfg.train.lr}], cfg)

    # Resume from the furthest checkpoint this exact config wrote (nerf.pt, then dmtet.pt)
    state = _latest_checkpoint(ckpt_dir, cfg.hash(), device)
    resumed_from = state["step"] if state else None
    if state:
        field_.load_state_dict(state["field"])
        detector = BoundaryDetector.from_dict(cfg.schedule, state["detector"])
        switch, history, seconds = state["switch"], state["history"], state["seconds"]
        gen.set_state(state["gen"]), torch.set_rng_state(state["torch_rng"])
        if state["stage"] == "nerf":
            ema.load_state_dict(state["ema"]), opt.load_state_dict(state["opt"])
        report({"stage": "resume", "step": state["step"], "total": total_iters})

    def checkpoint(stage: str, step: int, **modules) -> None:
        _save_atomic({"config_hash": cfg.hash(), "stage": stage, "step": step, "field": field_.state_dict(),
                      "opt": opt.state_dict(), "ema": ema.state_dict(), "detector": detector.to_dict(),
                      "switch": switch, "history": history, "seconds": seconds, "gen": gen.get_state(),
                      "torch_rng": torch.get_rng_state(),
                      **{k: m.state_dict() for k, m in modules.items()}}, ckpt_dir / f"{stage}.pt")

    def weights_at(step: int) -> tuple[float, float]:
        w3d, w2d = prior_weights(step, switch, total_iters, cfg.schedule)
        if step % log_every == 0:
            history["iterations"].append(step), history["w3d"].append(w3d), history["w2d"].append(w2d)
        return w3d, w2d

    # ---- Stage 1 and 2: NeRF under the 3D prior, then the dynamic prior --------------------------
    occupancy = OccupancyGrid(cfg.nerf.bound, device=device) if cfg.nerf.occupancy_grid else None
    nerf_start = state["step"] if state and state["stage"] == "nerf" else (nerf_iters if state else 0)
    tic = time.perf_counter()
    for step in range(nerf_start, nerf_iters):
        field_.train()
        w3d, w2d = weights_at(step)
        if occupancy is not None and step % 16 == 0:
            occupancy.update(field_, gen)
        if step % cfg.train.ref_every == 0:
            bg = torch.rand(3, generator=gen).to(device)
            out_ = render_nerf(field_, ref_cam, ref_size, ref_size, shading="albedo", bg_color=bg,
                               occupancy=occupancy, num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance)
            loss = (cfg.loss.rgb * losses.reference_rgb_loss(out_.rgb[0], ref.rgb, ref.mask, bg)
                    + cfg.loss.mask * losses.reference_mask_loss(out_.opacity[0], ref.mask))
            if depth_weight > 0:
                ramp = min(1.0, step / max(nerf_iters, 1))
                loss = loss + depth_weight * ramp * losses.pearson_depth_loss(out_.depth[0], ref.depth, ref.mask)
        else:
            cams = sample_novel_cameras(cfg.camera, 1, step / max(nerf_iters, 1), gen).to(device)
            style = novel_view_style(cfg, gen, cams, device)
            size = cfg.train.nerf_size
            normals_used = cfg.loss.orientation > 0 or cfg.loss.normal_smooth_2d > 0
            out_ = render_nerf(field_, cams, size, size, need_normals=normals_used, occupancy=occupancy,
                               num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance, **style)
            loss = prior_loss(priors, out_.rgb.permute(0, 3, 1, 2), cams, w3d, w2d,
                              cfg.prior.t_range_nerf, step / total_iters)
            loss = loss + nerf_regularisers(field_, out_, cams, size, cfg)
        loss = loss + cfg.loss.entropy * losses.entropy_loss(out_.opacity)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update_parameters(field_)

        if uses_detector and switch is None:
            if is_check_step(step, cfg.schedule):
                detector.update(step, clip_score(ema.module, priors, inp.prompt, cfg, device))
            elif step >= cfg.schedule.check_end:
                detector.force(step)
            switch = detector.switch_iteration
        report({"stage": "nerf", "step": step + 1, "total": total_iters, "loss": loss.item(), "w3d": w3d,
                "w2d": w2d, "S": detector.scores[-1] if detector.scores else None, "switch": switch})
        every = cfg.train.checkpoint_every
        if step + 1 == nerf_iters or (every and (step + 1) % every == 0):
            seconds["nerf"] += time.perf_counter() - tic
            tic = time.perf_counter()
            checkpoint("nerf", step + 1)
    if not (state and state["stage"] == "dmtet"):
        field_.load_state_dict(ema.module.state_dict())  # the DMTet stage and the export start from the EMA

    # ---- Stage 3: DMTet refinement under the same dynamic prior ---------------------------------
    mesh_render = None
    if dmtet_iters > 0:
        rasterizer = get_rasterizer(cfg.dmtet.backend, device)
        dmtet = DMTet(cfg.dmtet, cfg.nerf, bound=cfg.nerf.bound).to(device)
        dmtet.init_from_density(field_.density, cfg.dmtet.init_density_threshold)
        both = torch.nn.ModuleList([dmtet, field_])  # the NeRF's colour network is the texture field
        opt = make_optimizer([{"params": list(dmtet.parameters()), "lr": cfg.train.lr},
                              {"params": list(field_.grid_parameters()),
                               "lr": cfg.train.lr * cfg.train.grid_lr_scale},
                              {"params": list(field_.other_parameters()), "lr": cfg.train.lr}], cfg)
        ema = make_ema(both, cfg.train.ema_decay)
        d_start = nerf_iters
        if state and state["stage"] == "dmtet":
            dmtet.load_state_dict(state["dmtet"]), opt.load_state_dict(state["opt"])
            ema.load_state_dict(state["ema"])
            d_start = state["step"]
        albedo = lambda pts: field_(pts)[1]
        size = cfg.dmtet.render_size
        ref_d = reference_at(inp, size, device)
        tic = time.perf_counter()
        for step in range(d_start, total_iters):
            w3d, w2d = weights_at(step)
            mesh = dmtet.get_mesh()
            if step % cfg.train.ref_every == 0:
                bg = torch.rand(3, generator=gen).to(device)
                out_ = render_mesh(mesh, albedo, ref_cam, size, size, shading="albedo", bg_color=bg,
                                   rasterizer=rasterizer)
                loss = (cfg.loss.rgb * losses.reference_rgb_loss(out_.rgb[0], ref_d.rgb, ref_d.mask, bg)
                        + cfg.loss.mask * losses.reference_mask_loss(out_.opacity[0], ref_d.mask))
            else:
                cams = sample_novel_cameras(cfg.camera, 1, 1.0, gen).to(device)
                style = novel_view_style(cfg, gen, cams, device)
                out_ = render_mesh(mesh, albedo, cams, size, size, rasterizer=rasterizer, **style)
                loss = prior_loss(priors, out_.rgb.permute(0, 3, 1, 2), cams, w3d, w2d,
                                  cfg.prior.t_range_dmtet, step / total_iters)
            loss = (loss + cfg.loss.mesh_normal_consistency * mesh_normal_consistency(mesh)
                    + cfg.loss.mesh_laplacian * mesh_laplacian(mesh))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update_parameters(both)
            report({"stage": "dmtet", "step": step + 1, "total": total_iters, "loss": loss.item(),
                    "w3d": w3d, "w2d": w2d, "switch": switch})
            every = cfg.train.checkpoint_every
            if step + 1 == total_iters or (every and (step + 1) % every == 0):
                seconds["dmtet"] += time.perf_counter() - tic
                tic = time.perf_counter()
                checkpoint("dmtet", step + 1, dmtet=dmtet)
        ema_dmtet, ema_field = ema.module[0], ema.module[1]
        final_mesh = ema_dmtet.get_mesh()
        albedo = lambda pts: ema_field(pts)[1]
        mesh_render = lambda cams, s, **kw: render_mesh(final_mesh, albedo, cams, s, s, rasterizer=rasterizer, **kw)
        verts, faces = final_mesh.verts, final_mesh.faces
    else:
        albedo = lambda pts: field_(pts)[1]

    # ---- Export: mesh, orbit views for the metrics, turntable video -----------------------------
    tic = time.perf_counter()
    with torch.no_grad():
        def render(cams: Cameras, shading: str = "albedo"):
            s = cfg.train.eval_size
            if mesh_render is not None:
                return mesh_render(cams, s, shading=shading, bg_color=torch.ones(3, device=device))
            return render_nerf(field_, cams, s, s, shading=shading, perturb=False,
                               bg_color=torch.ones(3, device=device),
                               num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance)

        def rgba(o) -> np.ndarray:
            return _to_uint8(torch.cat([o.rgb, o.opacity], -1))

        views = []
        view_cams = orbit(cfg.train.eval_views, radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
        for i in range(len(view_cams)):
            _save_png(rgba(render(view_cams[i]))[0], out / "views" / f"view_{i:03d}.png")
            views.append({"file": f"views/view_{i:03d}.png", "azimuth": float(view_cams.azimuth[i]),
                          "polar": float(view_cams.polar[i])})
        _save_png(rgba(render(ref_cam))[0], out / "views" / "ref_render.png")
        ref_eval = reference_at(inp, cfg.train.eval_size, device)
        _save_png(_to_uint8(torch.cat([ref_eval.rgb, ref_eval.mask], -1)), out / "reference.png")
        turn = orbit(cfg.train.video_frames, radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
        frames = [_to_uint8(render(turn[i]).rgb)[0] for i in range(len(turn))]
        normals = [_to_uint8(render(turn[i], "normal").rgb)[0] for i in range(len(turn))]
        write_video(frames, out / "video" / "rgb.mp4", out / "video" / "rgb.gif")
        write_video(normals, out / "video" / "normal.mp4")
    outputs = {"reference": "reference.png", "ref_render": "views/ref_render.png",
               "video_rgb": "video/rgb.mp4", "gif_rgb": "video/rgb.gif", "video_normal": "video/normal.mp4"}
    if cfg.train.export_mesh:
        with torch.no_grad():
            if mesh_render is None:
                verts, faces = mesh_from_nerf(field_, resolution=128, threshold=cfg.dmtet.init_density_threshold)
            export_textured_mesh(verts.detach(), faces, albedo, out / "mesh", cfg.train.texture_size, name="mesh")
        outputs.update(mesh_obj="mesh/mesh.obj", mesh_glb="mesh/mesh.glb")
    seconds["export"] = time.perf_counter() - tic

    result = {
        "case": inp.case_id, "prompt": inp.prompt, "seed": cfg.seed, "preset": cfg.preset,
        "variant": cfg.schedule.variant, "config": cfg.to_dict(), "config_hash": cfg.hash(),
        "code_version": code_version(), "device": device_name(device), "model_ids": priors.model_ids,
        "switch_iteration": switch, "detector": detector.to_dict(), "weights": history,
        "stage_seconds": seconds, "warnings": warnings, "resumed_from": resumed_from,
        "views": views, "outputs": outputs,
    }
    _write_json(result, out / "result.json")
    report({"stage": "done", "step": total_iters, "total": total_iters})
    return result


def nerf_regularisers(field_, out_, cams: Cameras, size: int, cfg: ReconstructConfig) -> torch.Tensor:
    """Orientation, 3D and 2D normal smoothness on a novel-view render (METHOD.md weights)."""
    from c123.cameras import generate_rays

    total = out_.rgb.new_zeros(())
    if cfg.loss.orientation > 0 and out_.sample_normals is not None:
        total = total + cfg.loss.orientation * losses.orientation_loss(out_.weights, out_.sample_normals, out_.rays_d)
    if cfg.loss.normal_smooth_2d > 0:
        total = total + cfg.loss.normal_smooth_2d * losses.normal_smoothness_2d(out_.normal)
    if cfg.loss.normal_smooth_3d > 0:
        rays_o, rays_d = generate_rays(cams, size, size)
        pts = losses.surface_points(rays_o, rays_d, out_.depth, out_.opacity)
        total = total + cfg.loss.normal_smooth_3d * losses.normal_smoothness_3d(field_.normal, pts)
    return total


def _latest_checkpoint(ckpt_dir: Path, config_hash: str, device) -> dict | None:
    """The furthest checkpoint state written by this exact config (DMTet beats NeRF), else None."""
    for name in ("dmtet.pt", "nerf.pt"):
        path = ckpt_dir / name
        if path.exists():
            state = torch.load(path, map_location=device, weights_only=False)
            if state.get("config_hash") == config_hash:
                return state
    return None
