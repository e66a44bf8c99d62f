"""Background removal of a photo: CLIPSeg (transformers) segments what the text prompt names.

CLIPSeg (Lüddecke & Ecker, CVPR 2022; `CIDAS/clipseg-rd64-refined`) is a transformers-native model, so it
loads offline through the same weights resolver as the priors and has a tiny random twin in the real layout
(`c123 models tiny`). Being open-vocabulary it cuts out any object the prompt names (a cartoon sponge, a
sneaker, a bust), where a panoptic model knows only its training classes. Its logits come at the model's
input size (352 px) and are resized bilinearly to the photo; the object is where sigmoid(logit) exceeds
`preprocess.mask_threshold`, so edges are as fine as that grid: pass --mask or an RGBA for finer ones.
"""

from __future__ import annotations

import numpy as np

WHAT = "background removal (CLIPSeg)"


def remove_background(rgb: np.ndarray, prompt: str, model: str, threshold: float, device="cpu",
                      cache_dir: str | None = None) -> np.ndarray:
    """uint8 alpha HxW (255 on the object the prompt names, 0 elsewhere) of an RGB photo HxWx3; a Hub id is
    read from the HF cache `cache_dir` (prior.model_cache)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, CLIPSegForImageSegmentation

    from c123.priors.weights import load_frozen, resolve

    path = resolve(model, WHAT, cache_dir=cache_dir)
    processor = AutoProcessor.from_pretrained(path)
    segmenter, _ = load_frozen(CLIPSegForImageSegmentation, path, "", torch.float32, device)
    inputs = processor(text=[prompt], images=[Image.fromarray(rgb)], padding="max_length", return_tensors="pt")
    with torch.no_grad():
        logits = segmenter(**inputs.to(device)).logits
    logits = logits.reshape(1, 1, *logits.shape[-2:]).float()  # CLIPSeg drops the batch axis of one image
    logits = torch.nn.functional.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    inside = torch.sigmoid(logits[0, 0]) > threshold
    return (inside.cpu().numpy() * 255).astype(np.uint8)
