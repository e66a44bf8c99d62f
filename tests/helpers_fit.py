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
from c123.volume_render import render_nerf, render_rays

FIT_CONFIG = NerfConfig(num_levels=12, level_dim=2, log2_hashmap_size=16, base_resolution=16,
                        finest_resolution=256, hidden_dim=32, num_layers=2, num_samples=48, num_importance=16)
"""A small field that fits a 64x64 synthetic scene on CPU in a minute or two."""


@dataclass
class FitResult:
    """A fitted field and how the fit went."""

    field: NeRFField
    cfg: NerfConfig
    iters: int
    seconds: float
    train_psnr: float


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


def fit_nerf_to_scene(scene: SyntheticScene, views: int = 16, size: int = 64, iters: int = 400, seed: int = 0,
                      cfg: NerfConfig = FIT_CONFIG, batch_rays: int = 4096, lr: float = 1e-2) -> FitResult:
    """Fit a NeRFField to `views` ground-truth renders (size x size, on white) with Adam on random ray batches."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    cams = train_cameras(views)
    target = on_white(scene.render(cams, size, size)["rgba"]).reshape(-1, 3)
    rays_o, rays_d = (r.reshape(-1, 3) for r in generate_rays(cams, size, size))
    field = NeRFField(cfg)
    opt = torch.optim.Adam([{"params": field.grid_parameters()}, {"params": field.other_parameters()}],
                           lr=lr, betas=(0.9, 0.99), eps=1e-15)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.1 ** min(1.0, i / iters))
    start = time.perf_counter()
    for _ in range(iters):
        idx = torch.randint(0, rays_o.shape[0], (batch_rays,), generator=gen)
        out = render_rays(field, rays_o[idx], rays_d[idx], num_samples=cfg.num_samples,
                          num_importance=cfg.num_importance, perturb=True, generator=gen)
        loss = ((out["rgb"] - target[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    seconds = time.perf_counter() - start
    return FitResult(field, cfg, iters, seconds, psnr(out["rgb"].detach(), target[idx]))


@torch.no_grad()
def heldout_psnr(fit: FitResult, scene: SyntheticScene, size: int = 64, views: int = 8) -> float:
    """Mean PSNR of the fitted field against the scene on the held-out views (both on white)."""
    cams = heldout_cameras(views)
    target = on_white(scene.render(cams, size, size)["rgba"])
    pred = render_nerf(fit.field, cams, size, size, num_samples=fit.cfg.num_samples,
                       num_importance=fit.cfg.num_importance, perturb=False).rgb
    return sum(psnr(p, t) for p, t in zip(pred, target)) / views
