"""Shared test helpers: fit a NeRFField to ground-truth views of a synthetic scene (no priors involved)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from c123.cameras import Cameras, generate_rays, orbit_cameras
from c123.config import NerfConfig
from c123.nerf import NeRFField
from c123.synthetic import SyntheticScene
from c123.volume_render import OccupancyGrid, RaySettings, render_nerf, render_rays

FIT_CONFIG = NerfConfig(num_levels=8, level_dim=2, log2_hashmap_size=15, base_resolution=16,
                        finest_resolution=256, hidden_dim=32, num_layers=2, num_samples=32, num_importance=16)
"""A small field that fits a 64x64 synthetic scene on CPU in a minute or two."""


@dataclass
class FitResult:
    """A fitted field and how the fit went."""

    field: NeRFField
    cfg: NerfConfig
    iters: int
    seconds: float
    train_psnr: float
    occupancy: OccupancyGrid


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR (dB) of images in [0,1]."""
    return float(-10.0 * torch.log10(((pred - target) ** 2).mean().clamp(min=1e-12)))


def on_white(rgba: torch.Tensor) -> torch.Tensor:
    """Composite straight-alpha rgba [...,4] on white."""
    return rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])


def train_cameras(views: int = 16) -> Cameras:
    """Views spread over the sphere: azimuth every 360/views degrees, polar cycling 60..120."""
    azimuth = torch.arange(views, dtype=torch.float32) * 360.0 / views
    polar = torch.tensor([60.0, 80.0, 100.0, 120.0]).repeat(math.ceil(views / 4))[:views]
    return orbit_cameras(polar, azimuth, 3.2, 20.0)


def heldout_cameras(views: int = 8) -> Cameras:
    """Views between the training ones: azimuth offset by half a training step, polar 70 / 95."""
    azimuth = torch.arange(views, dtype=torch.float32) * 360.0 / views + 11.25
    polar = torch.tensor([70.0, 95.0]).repeat(math.ceil(views / 2))[:views]
    return orbit_cameras(polar, azimuth, 3.2, 20.0)


def fit_nerf_to_scene(scene: SyntheticScene, views: int = 16, size: int = 64, iters: int = 250, seed: int = 0,
                      cfg: NerfConfig = FIT_CONFIG, batch_rays: int = 1024, lr: float = 1e-2) -> FitResult:
    """Fit a NeRFField to `views` ground-truth renders (size x size, on white) with Adam on random ray batches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cams = train_cameras(views)
    rgba = scene.render(cams, size, size)["rgba"]
    target = on_white(rgba).reshape(-1, 3)
    # half of each batch from pixels the object covers: empty space is skipped anyway, the object needs the rays
    covered = (rgba[..., 3].reshape(-1) > 0).nonzero().squeeze(1)
    rays_o, rays_d = (r.reshape(-1, 3) for r in generate_rays(cams, size, size))
    field = NeRFField(cfg)
    opt = torch.optim.Adam([{"params": field.grid_parameters()}, {"params": field.other_parameters()}],
                           lr=lr, betas=(0.9, 0.99), eps=1e-15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** min(1.0, i / iters))
    grid = OccupancyGrid(cfg.bound, resolution=32, density_threshold=0.5, decay=0.8)
    start = time.perf_counter()
    for i in range(iters):
        if i % 8 == 3:   # exp densities start as a fog that fills every cell: probe often while it clears
            grid.update(field, gen)
        idx = torch.cat([torch.randint(0, rays_o.shape[0], (batch_rays // 2,), generator=gen),
                         covered[torch.randint(0, covered.shape[0], (batch_rays - batch_rays // 2,), generator=gen)]])
        out = render_rays(field, rays_o[idx], rays_d[idx], RaySettings(num_samples=cfg.num_samples,
                          num_importance=cfg.num_importance, perturb=True), occupancy=grid, generator=gen)
        loss = ((out["rgb"] - target[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    return FitResult(field, cfg, iters, seconds, psnr(out["rgb"].detach(), target[idx]), grid)


@torch.no_grad()
def heldout_psnr(fit: FitResult, scene: SyntheticScene, size: int = 64, views: int = 8) -> float:
    """Mean PSNR of the fitted field against the scene on the held-out views (both on white)."""
    cams = heldout_cameras(views)
    target = on_white(scene.render(cams, size, size)["rgba"])
    pred = render_nerf(fit.field, cams, size, size, RaySettings(num_samples=fit.cfg.num_samples,
                       num_importance=fit.cfg.num_importance, perturb=False), occupancy=fit.occupancy).rgb
    return sum(psnr(p, t) for p, t in zip(pred, target)) / views


def convention_holds(render_rgba, make_cameras=orbit_cameras) -> bool:
    """With the toy (arm on +x, red channel growing with x): the arm is right of centre at azimuth 0 and left of
    it at 180, and azimuth 90 shows the red (+x) side while -90 does not. `render_rgba(cams) -> [B,H,W,4]`."""
    rgba = render_rgba(make_cameras(90.0, torch.tensor([0.0, 180.0, 90.0, -90.0]), 3.2, 20.0))
    stats = []
    for view in rgba:
        alpha = view[..., 3]
        cols = torch.arange(alpha.shape[1], dtype=torch.float32) + 0.5
        stats.append((float((alpha * cols).sum() / alpha.sum() / alpha.shape[1]),
                      float((view[..., 0] * alpha).sum() / alpha.sum())))
    (front_col, _), (back_col, _), (_, red_plus), (_, red_minus) = stats
    return front_col > 0.515 > 0.485 > back_col and red_plus > 0.7 and red_minus < 0.3
