"""The two stages of the method as `Stage`s of the one training loop: what each renders and optimises.

NeRF stage (steps 1..nerf_iters): reference-view steps fit the input image (rgb, mask, depth); novel-view
steps take SDS from the priors at the current weights; the NeRF regularisers act on both. DMTet stage
(the next dmtet_iters steps): the surface extracted from a tet grid initialised from the averaged NeRF,
rasterised, textured by the NeRF's colour network, under the same priors. Sources: nerf/utils.py
train_step and nerf/renderer.py of the authors' code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
from c123.volume_render import (OccupancyGrid, RaySettings, RenderOutput, checkpointed_rows, occupancy_mode_for,
                                render_nerf)


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
class NerfStage:
    """The NeRF stage over steps 1..nerf_iters as named parts, each callable (and replaceable) alone: the
    reference-view terms, the novel-view (prior) terms, the regularisers, the preview and the detector's score.
    `build()` hands the training loop its `Stage`."""

    def __init__(self, field: NeRFField, rgba: torch.Tensor, depth: torch.Tensor | None, priors: Priors,
                 cfg: ReconstructConfig, gen: torch.Generator, device,
                 clip_score: Callable[[NeRFField, OccupancyGrid | None], float] | None = None):
        t, n = cfg.train, cfg.nerf
        self.field, self.priors, self.cfg, self.gen, self.device = field, priors, cfg, gen, device
        self.iters, self.clip_score = t.nerf_iters, clip_score
        self.ref_cam = reference_camera(cfg.camera).to(device)
        self.ref = reference_view(rgba, depth, int(round(t.nerf_size * t.ref_scale)), t.ref_mask_threshold, device)
        mode = occupancy_mode_for(n.occupancy_mode, device, n.grad_chunk_rays)
        self.occupancy = (OccupancyGrid(n.bound, n.occupancy_resolution, n.occupancy_threshold, device=device,
                                        mode=mode) if n.occupancy_grid else None)
        # no per-render finiteness check in training: the loop checks the loss periodically
        self.rays = RaySettings(num_samples=n.num_samples, num_importance=n.num_importance, check_finite=False,
                                grad_chunk=n.grad_chunk_rays)
        self.preview_rays = RaySettings(num_samples=n.num_samples, num_importance=n.num_importance, perturb=False)

    def before_step(self, step: int) -> None:
        ramp_levels(self.field, self.cfg, step, self.iters)
        if self.occupancy is not None and (step - 1) % self.cfg.nerf.occupancy_every == 0:
            self.occupancy.update(self.field, self.gen)

    def reference_terms(self, step: int) -> tuple[LossTerms, RenderOutput]:
        """Colour, mask and (ramped) depth of the reference view, rendered from a jittered camera over a
        random background."""
        cfg, t, ref, gen, device = self.cfg, self.cfg.train, self.ref, self.gen, self.device
        bg = reference_background(cfg, ref.size, gen, device)
        jitter = (rand(gen, 3, normal=True, device=device) * t.ref_jitter,
                  rand(gen, 3, normal=True, device=device) * t.ref_jitter)
        shaded = t.ref_shading == "lambertian" and needs_normals(cfg)  # ambient 1: the colour is the albedo
        rays = replace(self.rays, shading="lambertian" if shaded else "albedo")
        out = render_nerf(self.field, self.ref_cam, ref.size, ref.size, rays, ambient=1.0, bg_color=bg,
                          ray_jitter=jitter, occupancy=self.occupancy, generator=gen)
        terms = reference_image_terms(out, ref, bg, cfg)
        if ref.depth is not None and cfg.loss.depth > 0:
            ramp = min(1.0, step / max(self.iters, 1))
            terms["ref_depth"] = cfg.loss.depth * ramp * losses.pearson_depth_loss(out.depth[0], ref.depth, ref.mask,
                                                                                   ref.depth_index)
        return terms, out

    def novel_terms(self, step: int, w3d: float, w2d: float) -> tuple[LossTerms, RenderOutput]:
        """The priors' SDS on a novel view (the camera range widens with the step)."""
        cfg, gen, size = self.cfg, self.gen, self.cfg.train.nerf_size
        cams = sample_novel_cameras(cfg.camera, 1, progressive_ratio(cfg.camera, step, self.iters), gen, self.device)
        style = novel_view_style(cfg, gen, cams, self.device)
        rays = replace(self.rays, shading=style.pop("shading"), need_normals=needs_normals(cfg))
        out = render_nerf(self.field, cams, size, size, rays, occupancy=self.occupancy, generator=gen, **style)
        return prior_terms(self.priors, out.rgb.permute(0, 3, 1, 2), cams, w3d, w2d, cfg.prior.t_range_nerf, gen), out

    def regularisers(self, out: RenderOutput, step: int) -> LossTerms:
        """Entropy of the sample weights (ramped), orientation, 3D and 2D normal smoothness (renderer.py
        run_cuda, train_step); they act on reference and novel steps alike."""
        w, field = self.cfg.loss, self.field
        terms = {}
        if w.entropy > 0:
            ramp = min(1.0, w.entropy_ramp * step / max(self.iters, 1))
            terms["entropy"] = w.entropy * ramp * losses.entropy_loss(out.weights, out.sample_valid)
        if out.sample_normals is None:
            return terms
        if w.orientation > 0:
            terms["orientation"] = w.orientation * losses.orientation_loss(out.weights, out.sample_normals,
                                                                            out.rays_d, out.sample_valid)
        if w.normal_smooth_3d > 0:
            points, normals = out.sample_points.reshape(-1, 3), out.sample_normals.reshape(-1, 3)
            valid = None if out.sample_valid is None else out.sample_valid.reshape(-1)
            if out.sample_index is not None:  # the samples that exist, gathered without a host sync
                points, normals = points.index_select(0, out.sample_index), normals.index_select(0, out.sample_index)
                valid = None
            noise = rand(self.gen, *points.shape, normal=True, device=points.device) * 1e-2
            # chunked like the render (nerf.grad_chunk_rays rays' worth of samples), recomputed in the backward
            n = self.cfg.nerf
            perturbed = checkpointed_rows(field.normal, points + noise, n.grad_chunk_rays * (n.num_samples
                                                                                            + n.num_importance))
            terms["normal_3d"] = w.normal_smooth_3d * losses.normal_smoothness_3d(normals, perturbed, valid)
        if w.normal_smooth_2d > 0:
            terms["normal_2d"] = w.normal_smooth_2d * losses.normal_smoothness_2d(out.normal_image)
        return terms

    def loss_terms(self, step: int, reference: bool, w3d: float, w2d: float) -> LossTerms:
        terms, out = self.reference_terms(step) if reference else self.novel_terms(step, w3d, w2d)
        return {**terms, **self.regularisers(out, step)}

    def preview(self, cams: Cameras, size: int) -> torch.Tensor:
        return render_nerf(self.field, cams, size, size, self.preview_rays, bg_color=white(self.device),
                           occupancy=self.occupancy).rgb

    def score(self) -> float:
        """S^k of the current field (the boundary detector's input)."""
        return self.clip_score(self.field, self.occupancy)

    def build(self) -> Stage:
        """The training loop's view of this stage (the hot paths its parts call run compiled when asked)."""
        t, field = self.cfg.train, self.field
        groups = [{"params": field.grid_parameters(), "lr": t.lr * t.grid_lr_scale, "name": "grid"},
                  {"params": field.other_parameters(), "lr": t.lr, "name": "mlp"}]
        on = compiling.resolve(t.compile, self.device)
        return Stage("nerf", 1, self.iters, field, make_optimizer(groups, self.cfg),
                     compiling.within(on, self.loss_terms), compiling.within(on, self.before_step),
                     None if self.clip_score is None else self.score, ema=ParameterEMA(field, t.ema_decay),
                     extras={} if self.occupancy is None else {"occupancy": self.occupancy},
                     scaler=make_scaler(self.cfg, self.device), preview=self.preview)


def detector_cameras(cfg: ReconstructConfig) -> Cameras:
    """The boundary detector's orbit: schedule.num_views cameras circling at the reference camera's polar angle
    (the official validation loader: nerf/provider.py circle poses at default_polar; elevation 0 by default),
    azimuth 360 i / n, at the reference radius and field of view (also where c123/prior_views.py asks the 3D
    prior for its views)."""
    return orbit(cfg.schedule.num_views, polar=cfg.camera.ref_polar, radius=cfg.camera.ref_radius,
                 fovy=cfg.camera.fovy)


class DetectorScore:
    """S^k of a field: mean CLIP cosine between the prompt and `num_views` renders circling at the reference
    camera's polar angle (the official validation loader: nerf/provider.py circle poses at default_polar),
    rendered at schedule.render_size, quantised to 8 bits and area-resized to prior.clip_size (as the official
    writes its validation PNGs and reads them back with INTER_AREA)."""

    def __init__(self, priors: Priors, prompt: str, cfg: ReconstructConfig, device):
        self.priors, self.prompt, self.cfg = priors, prompt, cfg
        self.cams = detector_cameras(cfg).to(device)
        self.rays = RaySettings(num_samples=cfg.nerf.num_samples, num_importance=cfg.nerf.num_importance,
                                perturb=False)
        self.text = None
        """The prompt's CLIP embedding, computed at the first score."""

    @torch.no_grad()
    def __call__(self, field: NeRFField, occupancy: OccupancyGrid | None) -> float:
        size, clip = self.cfg.schedule.render_size, self.priors.clip
        out = render_nerf(field, self.cams, size, size, self.rays, occupancy=occupancy)
        png = (out.rgb.clamp(0, 1) * 255).floor() / 255  # cv2.imwrite of (pred * 255).astype(np.uint8)
        images = F.interpolate(png.permute(0, 3, 1, 2), size=(self.cfg.prior.clip_size,) * 2, mode="area")
        if self.text is None:
            self.text = clip.text_embeds([self.prompt])
        return float((clip.image_embeds(images, resize="bilinear") @ self.text.T).mean())


# ---- DMTet stage ---------------------------------------------------------------------------------
class DmtetStage:
    """The DMTet stage over the dmtet_iters steps after the NeRF stage: the tet grid's SDF and deformation
    and the NeRF (its colour network is the texture) are optimised together; no EMA (the official's
    DMTet-run average is read by nothing it writes). Named parts as NerfStage's; `build()` gives the Stage."""

    def __init__(self, field: NeRFField, dmtet: DMTet, rgba: torch.Tensor, priors: Priors, cfg: ReconstructConfig,
                 gen: torch.Generator, device):
        self.field, self.dmtet, self.priors, self.cfg, self.gen, self.device = field, dmtet, priors, cfg, gen, device
        self.first = cfg.train.nerf_iters + 1
        self.ref_cam = reference_camera(cfg.camera).to(device)
        self.size = cfg.dmtet.render_size
        self.ref = reference_view(rgba, None, self.size, cfg.train.ref_mask_threshold, device)  # known_view_scale 1
        self.rasterizer = get_rasterizer(cfg.dmtet.backend, device)

    def albedo(self, points: torch.Tensor) -> torch.Tensor:
        """The texture: the NeRF's colour network."""
        return self.field(points)[1]

    def before_step(self, step: int) -> None:
        ramp_levels(self.field, self.cfg, step - self.first + 1, self.cfg.train.dmtet_iters)

    def reference_terms(self, mesh) -> LossTerms:
        bg = reference_background(self.cfg, self.size, self.gen, self.device)
        out = render_mesh(mesh, self.albedo, self.ref_cam, self.size, self.size, shading="albedo", bg_color=bg,
                          rasterizer=self.rasterizer)
        return reference_image_terms(out, self.ref, bg, self.cfg)

    def novel_terms(self, mesh, w3d: float, w2d: float) -> LossTerms:
        cams = sample_novel_cameras(self.cfg.camera, 1, 1.0, self.gen, self.device)
        style = novel_view_style(self.cfg, self.gen, cams, self.device)
        out = render_mesh(mesh, self.albedo, cams, self.size, self.size, rasterizer=self.rasterizer, **style)
        return prior_terms(self.priors, out.rgb.permute(0, 3, 1, 2), cams, w3d, w2d, self.cfg.prior.t_range_dmtet,
                           self.gen)

    def regularisers(self, mesh) -> LossTerms:
        """Normal consistency and Laplacian smoothness of the extracted surface."""
        return {"mesh_normal": self.cfg.loss.mesh_normal_consistency * mesh_normal_consistency(mesh),
                "mesh_laplacian": self.cfg.loss.mesh_laplacian * mesh_laplacian(mesh)}

    def loss_terms(self, step: int, reference: bool, w3d: float, w2d: float) -> LossTerms:
        mesh = self.dmtet.get_mesh()
        terms = self.reference_terms(mesh) if reference else self.novel_terms(mesh, w3d, w2d)
        return {**terms, **self.regularisers(mesh)}

    def preview(self, cams: Cameras, size: int) -> torch.Tensor:
        return render_mesh(self.dmtet.get_mesh(), self.albedo, cams, size, size, shading="albedo",
                           bg_color=white(self.device), rasterizer=self.rasterizer).rgb

    def build(self) -> Stage:
        """The training loop's view of this stage (the hot paths its parts call run compiled when asked)."""
        t, field = self.cfg.train, self.field
        groups = [{"params": list(self.dmtet.parameters()), "lr": t.lr, "name": "tet"},
                  {"params": field.grid_parameters(), "lr": t.lr * t.grid_lr_scale, "name": "grid"},
                  {"params": field.other_parameters(), "lr": t.lr, "name": "mlp"}]
        module = nn.ModuleDict({"dmtet": self.dmtet, "field": field})
        on = compiling.resolve(t.compile, self.device)
        return Stage("dmtet", self.first, t.nerf_iters + t.dmtet_iters, module, make_optimizer(groups, self.cfg),
                     compiling.within(on, self.loss_terms), compiling.within(on, self.before_step),
                     scaler=make_scaler(self.cfg, self.device), preview=self.preview)
