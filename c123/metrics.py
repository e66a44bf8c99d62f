"""Evaluation metrics (METHOD.md section 6): PSNR, LPIPS, CLIP similarity, Chamfer distance.

Images are channel-last [..., H, W, 3] in [0, 1], already composited on white (`composite_white`).
A metric that cannot be computed raises; it never returns 0. The pipeline records NaN and the reason.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from c123.errors import WeightsMissingError

# torchvision builder and weights URL the lpips package loads for each backbone (torchvision 0.29)
_LPIPS_BACKBONES = {"alex": ("alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
                    "vgg": ("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth"),
                    "squeeze": ("squeezenet1_1", "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth")}


@dataclass
class MetricProtocol:
    """How the metrics of a result were computed; recorded with every result row."""

    clip_model: str
    num_views: int
    resolution: int
    background: str = "white"
    lpips_net: str = "alex"


def composite_white(rgba):
    """Straight-alpha RGBA [..., 4] (float 0..1 array or tensor; uint8 arrays are scaled) -> RGB on white."""
    if isinstance(rgba, np.ndarray) and rgba.dtype == np.uint8:
        rgba = rgba.astype(np.float32) / 255
    rgb, alpha = rgba[..., :3], rgba[..., 3:]
    return rgb * alpha + (1 - alpha)


def psnr(pred, target) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1] (data range 1); inf for identical images."""
    a, b = _as_numpy(pred), _as_numpy(target)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ, {a.shape} vs {b.shape}")
    _check_finite(a, b, "psnr")
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(-10 * np.log10(mse))


class LpipsMetric:
    """LPIPS distance (lower = more similar) with the lpips package's linear heads.

    The backbone comes from torchvision's cache (TORCH_HOME); random_backbone=True keeps the heads on a
    randomly initialised backbone, which only makes sense for tests.
    """

    def __init__(self, net: str = "alex", device="cpu", random_backbone: bool = False):
        if net not in _LPIPS_BACKBONES:
            raise ValueError(f"unknown LPIPS net '{net}': use one of {', '.join(_LPIPS_BACKBONES)}")
        if not random_backbone:
            _require_backbone(net)
        import lpips

        self.net, self.device = net, torch.device(device)
        self.name = f"{net}-random" if random_backbone else net
        with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
            warnings.simplefilter("ignore")
            self.model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=random_backbone, verbose=False)
        self.model = self.model.to(self.device).eval().requires_grad_(False)

    @torch.no_grad()
    def __call__(self, a, b) -> float:
        """Mean LPIPS between two images (or equal-sized batches) [..., H, W, 3] in [0, 1]."""
        x, y = _as_batch(a, self.device), _as_batch(b, self.device)
        if x.shape != y.shape:
            raise ValueError(f"lpips: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
        _check_finite(x, y, "lpips")
        return float(self.model(x * 2 - 1, y * 2 - 1).mean())


class ClipSimilarity:
    """Cosine similarity between the CLIP embedding of the reference image and of each rendered view."""

    def __init__(self, model, device="cpu", batch_size: int = 16):
        from c123.priors.clip import ClipModel

        if isinstance(model, ClipModel):
            self.clip, self.model_id = model, "loaded"
        else:
            from c123.priors.weights import resolve

            self.clip = ClipModel.from_pretrained(resolve(str(model), "CLIP-similarity metric"), device)
            self.model_id = str(model)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, ref_rgb, views_rgb) -> tuple[float, np.ndarray]:
        """(mean, per-view [N]) cosine between ref [H,W,3] and views [N,H,W,3], all in [0, 1] on white."""
        ref = _as_batch(ref_rgb, self.clip.device)
        views = _as_batch(views_rgb, self.clip.device)
        _check_finite(ref, views, "clip similarity")
        ref_embed = self.clip.image_embeds(ref)
        per_view = torch.cat([self.clip.image_embeds(views[i:i + self.batch_size]) @ ref_embed[0]
                              for i in range(0, len(views), self.batch_size)])
        per_view = per_view.double().cpu().numpy()
        return float(per_view.mean()), per_view


def chamfer_distance(points_a, points_b) -> float:
    """Symmetric Chamfer distance with squared L2: mean_a min_b |a-b|^2 + mean_b min_a |a-b|^2."""
    from scipy.spatial import cKDTree

    a, b = _as_numpy(points_a).astype(np.float64), _as_numpy(points_b).astype(np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != 3 or b.shape[1] != 3 or not len(a) or not len(b):
        raise ValueError(f"chamfer: need two non-empty [N,3] point sets, got {a.shape} and {b.shape}")
    _check_finite(a, b, "chamfer")
    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return float(np.mean(d_ab ** 2) + np.mean(d_ba ** 2))


def _require_backbone(net: str) -> None:
    """Fail fast, without a network attempt, when torchvision's backbone weights are not cached."""
    builder, url = _LPIPS_BACKBONES[net]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not cached.is_file():
        raise WeightsMissingError(
            f"LPIPS ({net}): torchvision's backbone weights {cached} are missing; download {url} to that path "
            f"(TORCH_HOME moves it), e.g. run `python -c \"import torchvision; torchvision.models."
            f"{builder}(weights='IMAGENET1K_V1')\"` on a connected machine and copy the file")


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_batch(x, device) -> torch.Tensor:
    """[H,W,3] or [N,H,W,3] (array or tensor) -> float [N,3,H,W] on device."""
    t = torch.as_tensor(_as_numpy(x), dtype=torch.float32, device=device)
    if t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected RGB images [..., H, W, 3], got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def _check_finite(a, b, what: str) -> None:
    finite = torch.isfinite if isinstance(a, torch.Tensor) else np.isfinite
    if not (bool(finite(a).all()) and bool(finite(b).all())):
        raise ValueError(f"{what}: input contains NaN or inf")
