"""Reference-view losses and the regularisers of METHOD.md section 2, as small tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_rgb_loss(pred_rgb: torch.Tensor, ref_rgb: torch.Tensor, ref_mask: torch.Tensor,
                       bg_color: torch.Tensor) -> torch.Tensor:
    """MSE between the render and the reference composited on the same background ([H,W,3] tensors)."""
    target = ref_rgb * ref_mask + bg_color * (1.0 - ref_mask)
    return F.mse_loss(pred_rgb, target)


def reference_mask_loss(pred_opacity: torch.Tensor, ref_mask: torch.Tensor) -> torch.Tensor:
    """MSE between rendered opacity and the reference mask ([H,W,1])."""
    return F.mse_loss(pred_opacity, ref_mask)


def pearson_depth_loss(pred_depth: torch.Tensor, ref_depth: torch.Tensor, ref_mask: torch.Tensor) -> torch.Tensor:
    """1 - Pearson correlation of rendered and reference depth inside the mask (scale/shift free)."""
    inside = ref_mask[..., 0] > 0.5
    a, b = pred_depth[..., 0][inside], ref_depth[..., 0][inside]
    if a.numel() < 2:
        return pred_depth.sum() * 0.0
    a, b = a - a.mean(), b - b.mean()
    corr = (a * b).sum() / (a.norm() * b.norm() + 1e-8)
    return 1.0 - corr


def entropy_loss(opacity: torch.Tensor) -> torch.Tensor:
    """Binary entropy of the opacity: pushes each pixel to fully empty or fully solid."""
    a = opacity.clamp(1e-5, 1.0 - 1e-5)
    return (-a * torch.log2(a) - (1.0 - a) * torch.log2(1.0 - a)).mean()


def orientation_loss(weights: torch.Tensor, sample_normals: torch.Tensor, rays_d: torch.Tensor) -> torch.Tensor:
    """Penalise visible normals facing away from the camera (Ref-NeRF): sum_i w_i max(0, n_i . d)^2."""
    facing = (sample_normals * rays_d[:, None, :]).sum(-1).clamp(min=0.0)
    return (weights.detach() * facing ** 2).sum(-1).mean()


def normal_smoothness_3d(normal_fn, points: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """|n(x) - n(x + noise)| at surface points: nearby normals should agree."""
    if points.numel() == 0:
        return torch.zeros((), device=points.device)
    return (normal_fn(points) - normal_fn(points + torch.randn_like(points) * eps)).abs().mean()


def normal_smoothness_2d(normal_image: torch.Tensor) -> torch.Tensor:
    """Squared finite differences of a rendered normal map [B,H,W,3] along both image axes."""
    dy = normal_image[:, 1:, :, :] - normal_image[:, :-1, :, :]
    dx = normal_image[:, :, 1:, :] - normal_image[:, :, :-1, :]
    return dy.square().mean() + dx.square().mean()


def surface_points(rays_o: torch.Tensor, rays_d: torch.Tensor, depth: torch.Tensor, opacity: torch.Tensor,
                   max_points: int = 4096) -> torch.Tensor:
    """Expected surface points x = o + depth * d of rays that hit something (for 3D smoothness)."""
    hit = opacity.reshape(-1) > 0.5
    pts = (rays_o.reshape(-1, 3) + depth.reshape(-1, 1) * rays_d.reshape(-1, 3))[hit]
    if pts.shape[0] > max_points:
        pts = pts[torch.randperm(pts.shape[0], device=pts.device)[:max_points]]
    return pts.detach()
