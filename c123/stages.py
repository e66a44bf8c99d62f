"""The two stages of the method as `Stage`s of the one training loop: what each renders and optimises.

NeRF stage (steps 1..nerf_iters): reference-view steps fit the input image (rgb, mask, depth); novel-view
steps take SDS from the priors at the current weights; the NeRF regularisers act on both. DMTet stage
(the next dmtet_iters steps): the surface extracted from a tet grid initialised from the averaged NeRF,
rasterised, textured by the NeRF's colour network, under the same priors. Sources: nerf/utils.py
train_step and nerf/renderer.py of the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from c123 import compiling, losses
from c123.cameras import Cameras, orbit, progressive_ratio, reference_camera, sample_novel_cameras
from c123.config import ReconstructConfig
from c123.dmtet import DMTet, mesh_laplacian, mesh_normal_consistency, render_mesh
from c123.ema import ParameterEMA
from c123.hashgrid import level_ratio
from c123.nerf import NeRFField
from c123.priors.loading import Priors
from c123.rasterizer import get_rasterizer
from c123.training import LossTerms, Stage, make_optimizer, make_scaler
from c123.volume_render import OccupancyGrid, RenderOutput, occupancy_mode_for, render_nerf


# ---- the reference view ------------------------------------------------------------------------
@dataclass
class ReferenceView:
    """The input at one render size: colour on white [H,W,3], the training mask [H,W,1], depth or None."""

    white: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor | None
    depth_index: torch.Tensor | None = None
    """Flat indices of the pixels where the depth loss looks (mask > 0.5), found once: no per-step host sync."""

    @property
    def size(self) -> int:
        return self.white.shape[0]


def reference_view(rgba: torch.Tensor, depth: torch.Tensor | None, size: int, mask_threshold: float | None,
                   device) -> ReferenceView:
    """Area-resize the RGBA [1,4,H,W] (premultiplied, so edges do not bleed) and depth [1,1,H,W] to `size`."""
    alpha = rgba[:, 3:]
    premult = F.interpolate(torch.cat([rgba[:, :3] * alpha, alpha], 1), size=(size, size), mode="area")
    a = premult[0, 3:].permute(1, 2, 0)
    white = (premult[0, :3].permute(1, 2, 0) + (1 - a)).clamp(0, 1)
    d = None if depth is None else F.interpolate(depth, size=(size, size), mode="area")[0].permute(1, 2, 0)
    mask = losses.reference_mask(a, mask_threshold)
    index = None if d is None else losses.depth_loss_pixels(mask).to(device)
    return ReferenceView(white.to(device), mask.to(device), None if d is None else d.to(device), index)


def rand(gen: torch.Generator, *shape, normal: bool = False, device=None) -> torch.Tensor:
    """Uniform (or standard normal) draws from the run's generator, made on its device (the compute device:
    no host-to-device copy), then placed on `device`."""
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=gen, device=gen.device).to(device or gen.device)


def reference_background(cfg: ReconstructConfig, size: int, gen: torch.Generator, device) -> torch.Tensor:
    """A random colour per pixel [1,H,W,3] (the official) or one flat colour [3]."""
    shape = (1, size, size, 3) if cfg.train.ref_background == "noise" else (3,)
    return rand(gen, *shape, device=device)


# ---- what every novel view shares ----------------------------------------------------------------
def novel_view_style(cfg: ReconstructConfig, gen: torch.Generator, cams: Cameras, device) -> dict:
    """Shading, light and background of a novel view: lambertian 80% / textureless 20%, random ambient,
    a light around the camera, a random flat background (train_step's novel branch).

    Drawn and decided on the device (no host sync): `textureless` is a bool tensor the renderers read."""
    u = rand(gen, 5, device=device)
    lo, hi = cfg.train.ambient_range
    if lo >= 1.0 and cfg.train.lambertian_prob >= 1.0:
        shading, textureless = "albedo", None  # always lambertian under full ambient light: plain albedo
    else:
        shading, textureless = "lambertian", u[0] >= cfg.train.lambertian_prob
    eye = cams.c2w[:, :3, 3].to(device)
    light = F.normalize(eye + rand(gen, *eye.shape, normal=True, device=device), dim=-1)
    bg = u[2:5] if cfg.train.novel_background == "random" else torch.ones(3, device=device)
    ambient = (lo + (hi - lo) * u[1].double()).float()  # in float64 as the official's Python float
    return dict(shading=shading, textureless=textureless, ambient=ambient, light_dir=light, bg_color=bg)


def reference_image_terms(out: RenderOutput, ref: ReferenceView, bg: torch.Tensor, cfg: ReconstructConfig
                          ) -> LossTerms:
    """The reference view's colour (over the render's background) and mask terms, the same in both stages."""
    return {"ref_rgb": cfg.loss.rgb * losses.reference_rgb_loss(out.rgb[0], ref.white, ref.mask,
                                                                bg[0] if bg.dim() == 4 else bg),
            "ref_mask": cfg.loss.mask * losses.reference_mask_loss(out.opacity[0], ref.mask)}


def prior_terms(priors: Priors, images: torch.Tensor, cams: Cameras, w3d: float, w2d: float,
                t_range: tuple[float, float], gen: torch.Generator) -> LossTerms:
    """w3D * L_3D and w2D * L_2D; a prior whose weight is 0 is not evaluated at all."""
    terms = {}
    if w3d > 0 and priors.zero123 is not None:
        terms["sds_3d"] = w3d * priors.zero123.loss(images, cams, t_range=t_range, generator=gen)
    if w2d > 0 and priors.sd is not None:
        terms["sds_2d"] = w2d * priors.sd.loss(images, cams, t_range=t_range, generator=gen)
    return terms


def ramp_levels(field: NeRFField, cfg: ReconstructConfig, step_in_stage: int, stage_iters: int) -> None:
    """Coarse-to-fine hash levels (train_step's progressive_level); the ramp restarts in the DMTet stage, whose
    official run counts its global_step from 0 again."""
    on = cfg.nerf.progressive_level
    field.set_level_ratio(level_ratio(step_in_stage / max(stage_iters, 1)) if on else 1.0)


def white(device) -> torch.Tensor:
    """The white background of renders that are looked at (validation strips)."""
    return torch.ones(3, device=device)


def needs_normals(cfg: ReconstructConfig) -> bool:
    """Whether any NeRF regulariser uses normals."""
    return cfg.loss.orientation > 0 or cfg.loss.normal_smooth_3d > 0 or cfg.loss.normal_smooth_2d > 0


# ---- NeRF stage ----------------------------------------------------------------------------------
def nerf_stage(field: NeRFField, rgba: torch.Tensor, depth: torch.Tensor | None, priors: Priors,
               cfg: ReconstructConfig, gen: torch.Generator, device,
               clip_score: Callable[[NeRFField, OccupancyGrid | None], float] | None) -> tuple[Stage, OccupancyGrid | None]:
    """The NeRF stage over steps 1..nerf_iters, and its occupancy grid (None when off)."""
    t, iters = cfg.train, cfg.train.nerf_iters
    ref_cam = reference_camera(cfg.camera).to(device)
    ref = reference_view(rgba, depth, int(round(t.nerf_size * t.ref_scale)), t.ref_mask_threshold, device)
    occupancy = (OccupancyGrid(cfg.nerf.bound, cfg.nerf.occupancy_resolution, cfg.nerf.occupancy_threshold,
                               device=device, mode=occupancy_mode_for(cfg.nerf.occupancy_mode, device)) if cfg.nerf.occupancy_grid else None)
    # no per-render finiteness check: the loop checks the loss periodically
    render = dict(occupancy=occupancy, num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance,
                  generator=gen, check_finite=False)

    def before_step(step: int) -> None:
        ramp_levels(field, cfg, step, iters)
        if occupancy is not None and (step - 1) % cfg.nerf.occupancy_every == 0:
            occupancy.update(field, gen)

    def reference_terms(step: int) -> tuple[LossTerms, RenderOutput]:
        bg = reference_background(cfg, ref.size, gen, device)
        jitter = (rand(gen, 3, normal=True, device=device) * t.ref_jitter,
                  rand(gen, 3, normal=True, device=device) * t.ref_jitter)
        shaded = t.ref_shading == "lambertian" and needs_normals(cfg)  # ambient 1: the colour is the albedo
        out = render_nerf(field, ref_cam, ref.size, ref.size, shading="lambertian" if shaded else "albedo",
                          ambient=1.0, bg_color=bg, ray_jitter=jitter, **render)
        terms = reference_image_terms(out, ref, bg, cfg)
        if ref.depth is not None and cfg.loss.depth > 0:
            ramp = min(1.0, step / max(iters, 1))
            terms["ref_depth"] = cfg.loss.depth * ramp * losses.pearson_depth_loss(out.depth[0], ref.depth, ref.mask,
                                                                                   ref.depth_index)
        return terms, out

    def novel_terms(step: int, w3d: float, w2d: float) -> tuple[LossTerms, RenderOutput]:
        cams = sample_novel_cameras(cfg.camera, 1, progressive_ratio(cfg.camera, step, iters), gen, device)
        style = novel_view_style(cfg, gen, cams, device)
        out = render_nerf(field, cams, t.nerf_size, t.nerf_size, need_normals=needs_normals(cfg), **style, **render)
        return prior_terms(priors, out.rgb.permute(0, 3, 1, 2), cams, w3d, w2d, cfg.prior.t_range_nerf, gen), out

    def loss_terms(step: int, reference: bool, w3d: float, w2d: float) -> LossTerms:
        terms, out = reference_terms(step) if reference else novel_terms(step, w3d, w2d)
        return {**terms, **nerf_regularisers(field, out, step, iters, cfg, gen)}

    def preview(cams: Cameras, size: int) -> torch.Tensor:
        return render_nerf(field, cams, size, size, shading="albedo", perturb=False, bg_color=white(device),
                           occupancy=occupancy, num_samples=cfg.nerf.num_samples,
                           num_importance=cfg.nerf.num_importance).rgb

    groups = [{"params": field.grid_parameters(), "lr": t.lr * t.grid_lr_scale, "name": "grid"},
              {"params": field.other_parameters(), "lr": t.lr, "name": "mlp"}]
    score = None if clip_score is None else (lambda: clip_score(field, occupancy))
    on = compiling.resolve(t.compile, device)  # the hot paths these call run compiled
    loss_terms, before_step = compiling.within(on, loss_terms), compiling.within(on, before_step)
    stage = Stage("nerf", 1, iters, field, make_optimizer(groups, cfg), loss_terms, before_step, score,
                  ema=ParameterEMA(field, t.ema_decay), extras={} if occupancy is None else {"occupancy": occupancy},
                  scaler=make_scaler(cfg, device), preview=preview)
    return stage, occupancy


def nerf_regularisers(field: NeRFField, out: RenderOutput, step: int, iters: int, cfg: ReconstructConfig,
                      gen: torch.Generator) -> LossTerms:
    """Entropy of the sample weights (ramped), orientation, 3D and 2D normal smoothness (renderer.py
    run_cuda, train_step); they act on reference and novel steps alike."""
    w = cfg.loss
    terms = {}
    if w.entropy > 0:
        ramp = min(1.0, w.entropy_ramp * step / max(iters, 1))
        terms["entropy"] = w.entropy * ramp * losses.entropy_loss(out.weights, out.sample_valid)
    if out.sample_normals is None:
        return terms
    if w.orientation > 0:
        terms["orientation"] = w.orientation * losses.orientation_loss(out.weights, out.sample_normals, out.rays_d,
                                                                        out.sample_valid)
    if w.normal_smooth_3d > 0:
        points, normals = out.sample_points.reshape(-1, 3), out.sample_normals.reshape(-1, 3)
        valid = None if out.sample_valid is None else out.sample_valid.reshape(-1)
        if out.sample_index is not None:  # the samples that exist, gathered without a host sync
            points, normals = points.index_select(0, out.sample_index), normals.index_select(0, out.sample_index)
            valid = None
        noise = rand(gen, *points.shape, normal=True, device=points.device) * 1e-2
        terms["normal_3d"] = w.normal_smooth_3d * losses.normal_smoothness_3d(normals, field.normal(points + noise),
                                                                              valid)
    if w.normal_smooth_2d > 0:
        terms["normal_2d"] = w.normal_smooth_2d * losses.normal_smoothness_2d(out.normal_image)
    return terms


def detector_score(priors: Priors, prompt: str, cfg: ReconstructConfig, device) -> Callable:
    """S^k of a field: mean CLIP cosine between the prompt and `num_views` renders at elevation 0, rendered at
    schedule.render_size, quantised to 8 bits and area-resized to prior.clip_size (as the official writes its
    validation PNGs and reads them back with INTER_AREA)."""
    s = cfg.schedule
    cams = orbit(s.num_views, radius=cfg.camera.ref_radius, fovy=cfg.camera.fovy).to(device)
    text = None

    @torch.no_grad()
    def score(field: NeRFField, occupancy: OccupancyGrid | None) -> float:
        nonlocal text
        out = render_nerf(field, cams, s.render_size, s.render_size, shading="albedo", perturb=False,
                          occupancy=occupancy, num_samples=cfg.nerf.num_samples,
                          num_importance=cfg.nerf.num_importance)
        png = (out.rgb.clamp(0, 1) * 255).floor() / 255  # cv2.imwrite of (pred * 255).astype(np.uint8)
        images = F.interpolate(png.permute(0, 3, 1, 2), size=(cfg.prior.clip_size,) * 2, mode="area")
        if text is None:
            text = priors.clip.text_embeds([prompt])
        return float((priors.clip.image_embeds(images, resize="bilinear") @ text.T).mean())

    return score


# ---- DMTet stage ---------------------------------------------------------------------------------
def dmtet_stage(field: NeRFField, dmtet: DMTet, rgba: torch.Tensor, priors: Priors, cfg: ReconstructConfig,
                gen: torch.Generator, device) -> Stage:
    """The DMTet stage over the dmtet_iters steps after the NeRF stage: the tet grid's SDF and deformation
    and the NeRF (its colour network is the texture) are optimised together; no EMA (the official's
    DMTet-run average is read by nothing it writes)."""
    t, first = cfg.train, cfg.train.nerf_iters + 1
    ref_cam = reference_camera(cfg.camera).to(device)
    size = cfg.dmtet.render_size
    ref = reference_view(rgba, None, size, t.ref_mask_threshold, device)   # known_view_scale = 1 in DMTet
    rasterizer = get_rasterizer(cfg.dmtet.backend, device)
    albedo = lambda points: field(points)[1]  # the NeRF's colour network is the texture

    def before_step(step: int) -> None:
        ramp_levels(field, cfg, step - first + 1, t.dmtet_iters)

    def loss_terms(step: int, reference: bool, w3d: float, w2d: float) -> LossTerms:
        mesh = dmtet.get_mesh()
        if reference:
            bg = reference_background(cfg, size, gen, device)
            out = render_mesh(mesh, albedo, ref_cam, size, size, shading="albedo", bg_color=bg, rasterizer=rasterizer)
            terms = reference_image_terms(out, ref, bg, cfg)
        else:
            cams = sample_novel_cameras(cfg.camera, 1, 1.0, gen, device)
            style = novel_view_style(cfg, gen, cams, device)
            out = render_mesh(mesh, albedo, cams, size, size, rasterizer=rasterizer, **style)
            terms = prior_terms(priors, out.rgb.permute(0, 3, 1, 2), cams, w3d, w2d, cfg.prior.t_range_dmtet, gen)
        terms["mesh_normal"] = cfg.loss.mesh_normal_consistency * mesh_normal_consistency(mesh)
        terms["mesh_laplacian"] = cfg.loss.mesh_laplacian * mesh_laplacian(mesh)
        return terms

    def preview(cams: Cameras, size: int) -> torch.Tensor:
        return render_mesh(dmtet.get_mesh(), albedo, cams, size, size, shading="albedo", bg_color=white(device),
                           rasterizer=rasterizer).rgb

    groups = [{"params": list(dmtet.parameters()), "lr": t.lr, "name": "tet"},
              {"params": field.grid_parameters(), "lr": t.lr * t.grid_lr_scale, "name": "grid"},
              {"params": field.other_parameters(), "lr": t.lr, "name": "mlp"}]
    module = nn.ModuleDict({"dmtet": dmtet, "field": field})
    on = compiling.resolve(t.compile, device)  # the hot paths these call run compiled
    loss_terms, before_step = compiling.within(on, loss_terms), compiling.within(on, before_step)
    return Stage("dmtet", first, t.nerf_iters + t.dmtet_iters, module, make_optimizer(groups, cfg), loss_terms,
                 before_step, scaler=make_scaler(cfg, device), preview=preview)
