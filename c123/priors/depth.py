"""Monocular depth of a photo with a DPT model through transformers (as the official Omnidata DPT-hybrid).

DPT-style models predict relative inverse depth (disparity, known only up to scale and shift), so a
reciprocal is meaningless; the map is flipped and normalised instead, (max - d) / (max - min) on the object,
0 outside, which is what the Pearson depth loss needs (the ordering, up to an affine map). The official
preprocess_image.py likewise runs DPT on the whole photo and normalises its output on the object's mask.
"""

from __future__ import annotations

import numpy as np

WHAT = "depth estimation (DPT)"


def estimate_depth(rgb: np.ndarray, inside: np.ndarray, model: str, device="cpu",
                   cache_dir: str | None = None) -> np.ndarray:
    """float32 HxW depth of an RGB image HxWx3 on the object (`inside`, bool HxW), larger = farther, 0 outside;
    a Hub id is read from the HF cache `cache_dir` (prior.model_cache)."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from c123.priors.weights import load_frozen, resolve

    path = resolve(model, WHAT, cache_dir=cache_dir)
    processor = AutoImageProcessor.from_pretrained(path)
    estimator, _ = load_frozen(AutoModelForDepthEstimation, path, "", torch.float32, device)
    inputs = processor(images=Image.fromarray(rgb), return_tensors="pt").to(device)
    with torch.no_grad():
        disparity = estimator(**inputs).predicted_depth
    disparity = torch.nn.functional.interpolate(disparity[:, None].float(), size=rgb.shape[:2],
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    lo, hi = disparity[inside].min(), disparity[inside].max()
    depth = np.where(inside, (hi - disparity) / (hi - lo if hi > lo else 1.0), 0.0)  # flat map: all 0
    return depth.astype(np.float32)
