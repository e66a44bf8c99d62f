"""Reference-view losses and the regularisers, as small tensor functions (nerf/utils.py train_step and
nerf/renderer.py run_cuda of the authors' code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur


def reference_mask(alpha: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """The reference mask [H,W,1]: alpha > threshold as 0/1 (the official), or the soft alpha when None."""
    return alpha if threshold is None else (alpha > threshold).to(alpha.dtype)


def reference_rgb_loss(pred_rgb: torch.Tensor, ref_white: torch.Tensor, mask: torch.Tensor,
                       bg_color: torch.Tensor) -> torch.Tensor:
    """MSE between the render [H,W,3] and the reference on white composited over the render's background
    by the mask (bg_color [3] or per pixel [H,W,3])."""
    target = ref_white * mask + bg_color * (1.0 - mask)
    return F.mse_loss(pred_rgb, target)


def reference_mask_loss(pred_opacity: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between rendered opacity and the reference mask ([H,W,1])."""
    return F.mse_loss(pred_opacity, mask)


def depth_loss_pixels(ref_mask: torch.Tensor) -> torch.Tensor:
    """Flat indices of the pixels of a mask [H,W,1] where the depth loss looks (mask > 0.5)."""
    return (ref_mask[..., 0] > 0.5).reshape(-1).nonzero().squeeze(1)


def pearson_depth_loss(pred_depth: torch.Tensor, ref_depth: torch.Tensor, ref_mask: torch.Tensor,
                       inside: torch.Tensor | None = None) -> torch.Tensor:
    """1 - Pearson correlation of rendered and reference depth inside the mask (scale/shift free).

    inside: `depth_loss_pixels(ref_mask)` when found once beforehand (the mask is constant): then the loss needs
    no host sync."""
    if inside is None:
        inside = depth_loss_pixels(ref_mask)
    a = pred_depth[..., 0].reshape(-1).index_select(0, inside)
    b = ref_depth[..., 0].reshape(-1).index_select(0, inside)
    if a.numel() < 2:
        return pred_depth.sum() * 0.0
    a, b = a - a.mean(), b - b.mean()
    corr = (a * b).sum() / (a.norm() * b.norm() + 1e-8)
    return 1.0 - corr


def _mean_over(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the samples that exist (`valid` [R,S]; None: all); the official has only marched samples."""
    if valid is None:
        return values.mean()
    valid = valid.to(values.dtype)
    while valid.dim() < values.dim():
        valid = valid[..., None]
    count = valid.expand_as(values).sum().clamp(min=1.0)
    return (values * valid).sum() / count


def entropy_loss(weights: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Binary entropy of the per-sample compositing weights [R,S] (clamped to [1e-5, 1 - 1e-5]), mean over
    samples: pushes each sample to fully empty or fully solid."""
    a = weights.clamp(1e-5, 1.0 - 1e-5)
    return _mean_over(-a * torch.log2(a) - (1.0 - a) * torch.log2(1.0 - a), valid)


def orientation_loss(weights: torch.Tensor, sample_normals: torch.Tensor, rays_d: torch.Tensor,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """Visible normals facing away from the camera (Ref-NeRF): mean over samples of sg(w) max(0, n.d)^2."""
    facing = (sample_normals * rays_d[:, None, :]).sum(-1).clamp(min=0.0)
    return _mean_over(weights.detach() * facing ** 2, valid)


def normal_smoothness_3d(normals: torch.Tensor, perturbed: torch.Tensor,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |n(x) - n(x + 0.01 noise)| over samples and components: nearby normals should agree."""
    return _mean_over((normals - perturbed).abs(), valid)


def normal_smoothness_2d(normal_image: torch.Tensor) -> torch.Tensor:
    """Smoothness of a normal image [B,H,W,3] in [0,1]: MSE to its own 9-px Gaussian blur (detached) plus
    squared finite differences along both image axes (the official adds both at the same weight)."""
    chw = normal_image.permute(0, 3, 1, 2)
    blurred = gaussian_blur(chw.detach(), kernel_size=9)
    dy = normal_image[:, 1:, :, :] - normal_image[:, :-1, :, :]
    dx = normal_image[:, :, 1:, :] - normal_image[:, :, :-1, :]
    return F.mse_loss(chw, blurred) + dy.square().mean() + dx.square().mean()
