"""Input images -> the reference view: cut out, recentred, resized, with a depth map on the same grid.

Recentring follows the authors' preprocessing: the bounding box of the object (alpha > 0.5) is scaled so
that its longer side spans (1 - border_ratio) of a square canvas and placed in the centre. Image, alpha
and depth go through one resampling call each with the same crop box and scale, so they stay aligned.

Files are read as people see them: the EXIF orientation of an image and of its mask is applied first.
Large inputs are worked on at most MAX_SIDE pixels on their longer side (image, mask and depth scaled by
the same factor), so memory stays bounded whatever the file's size; PIL's decompression-bomb limit is an
InputError. A depth map with NaN/inf values or without variation inside the mask is dropped with a warning
(the depth loss is then off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from c123.errors import InputError

MAX_SIDE = 2048
"""Longest side, in pixels, that preprocessing works at (and the largest default canvas); larger inputs are
downscaled first. The reconstruction renders the reference at a few hundred pixels."""


@dataclass
class ReconstructionInput:
    """The preprocessed reference view of one reconstruction."""

    case_id: str
    rgba: np.ndarray
    """uint8 HxWx4, the object recentred on a square canvas (straight, not premultiplied, alpha)."""
    depth: np.ndarray | None = None
    """float32 HxW in [0, 1], larger = farther, 0 outside the mask; None when no depth was given."""
    prompt: str = ""
    sources: dict[str, str] = field(default_factory=dict)
    """The files this input came from: image, and mask / depth when given."""
    warnings: list[str] = field(default_factory=list)
    """What preprocessing changed or dropped (e.g. an unusable depth map), one line each, for result.json."""


def load_input(image, mask=None, depth=None, prompt: str = "", case_id: str | None = None,
               size: int | None = None, border_ratio: float = 0.2, recenter: bool = True) -> ReconstructionInput:
    """Read an RGBA image (or RGB + mask) and optional depth PNG into a recentred reference view.

    A given mask replaces the image's own alpha. `size` is the output canvas side (default: the longer
    side of the input). With recenter=False the image is only padded to a square and resized.
    """
    image = Path(image)
    pixels = _open(image)
    full_size, has_alpha = pixels.size, "A" in pixels.getbands() or "transparency" in pixels.info
    mode = "RGBA" if has_alpha else "RGB"
    work = _working_size(pixels if pixels.mode == mode else pixels.convert(mode))
    del pixels  # the full-size decode is not needed past this point
    if mask is not None:
        mask_img = _open(Path(mask))
        if mask_img.size != full_size:
            raise InputError(f"{mask} is {mask_img.size[0]}x{mask_img.size[1]} but {image} is "
                             f"{full_size[0]}x{full_size[1]} (after EXIF orientation): pass a mask of the "
                             "image's size")
        alpha = np.asarray(_working_size(mask_img.convert("L")))
    elif has_alpha:
        alpha = np.asarray(work.getchannel("A"))
        if alpha.min() == 255:
            raise InputError(f"{image} is fully opaque and no mask was given: pass --mask MASK.png or an "
                             "RGBA image with the background transparent")
    else:
        raise InputError(f"{image} has no alpha channel and no mask was given: pass --mask MASK.png or an "
                         "RGBA image")
    rgb = np.asarray(work.convert("RGB"))
    if not (alpha > 127).any():
        raise InputError(f"the mask of {image} is empty (no pixel with alpha > 0.5): check the mask file")

    depth_map = _read_depth(Path(depth), rgb.shape[:2]) if depth is not None else None
    height, width = alpha.shape
    canvas = size or min(max(height, width), MAX_SIDE)
    if recenter:
        rows, cols = np.nonzero(alpha > 127)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        target = int(canvas * (1 - border_ratio))
    else:
        box, target = (0, 0, width, height), canvas

    channels = [rgb[..., c] for c in range(3)] + [alpha]
    out = np.stack([_place(ch, box, target, canvas) for ch in channels], -1)
    rgba = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    warnings = []
    if depth_map is not None:
        depth_map = _place(depth_map, box, target, canvas)
        depth_map[rgba[..., 3] <= 127] = 0.0
        problem = _depth_problem(depth_map, rgba[..., 3] > 127)
        if problem:
            warnings.append(f"depth map {depth} {problem}: the depth loss is off")
            depth_map = None
    sources = {"image": str(image)}
    sources.update({k: str(v) for k, v in (("mask", mask), ("depth", depth)) if v is not None})
    return ReconstructionInput(case_id=case_id or image.stem, rgba=rgba, depth=depth_map, prompt=prompt,
                               sources=sources, warnings=warnings)


def estimate_depth(rgba: np.ndarray, model_dir: str, device="cpu") -> np.ndarray:
    """Monocular depth of an RGBA image with a transformers DPT model: float32 HxW, larger = farther.

    DPT-style models predict relative inverse depth (disparity, known only up to scale and shift), so a
    reciprocal is meaningless; the map is flipped and normalised instead, (max - d) / (max - min) on the
    mask, 0 outside, which is what the Pearson depth loss needs (the ordering, up to an affine map).
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    from c123.priors.weights import resolve

    path = resolve(model_dir, "depth estimation (DPT)")
    processor = AutoImageProcessor.from_pretrained(path)
    model = AutoModelForDepthEstimation.from_pretrained(path).to(device).eval()
    alpha = rgba[..., 3:].astype(np.float32) / 255
    white = (rgba[..., :3].astype(np.float32) * alpha + 255 * (1 - alpha)).round().astype(np.uint8)
    inputs = processor(images=Image.fromarray(white), return_tensors="pt").to(device)
    with torch.no_grad():
        disparity = model(**inputs).predicted_depth
    disparity = torch.nn.functional.interpolate(disparity[:, None].float(), size=rgba.shape[:2],
                                                mode="bicubic", align_corners=False)[0, 0].cpu().numpy()
    inside = rgba[..., 3] > 127
    lo, hi = disparity[inside].min(), disparity[inside].max()
    depth = np.where(inside, (hi - disparity) / (hi - lo if hi > lo else 1.0), 0.0)  # flat map: all 0
    return depth.astype(np.float32)


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image, upright as its EXIF orientation says; every failure is an InputError
    naming the file."""
    if not path.is_file():
        raise InputError(f"{path} does not exist: check the path")
    try:
        img = Image.open(path)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img
    except Image.DecompressionBombError as err:
        raise InputError(f"{path} is too large to decode safely ({err}): pass an image of at most "
                         f"{Image.MAX_IMAGE_PIXELS:,} pixels (downscale it)") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path} is not a readable image ({type(err).__name__}): pass a PNG or JPEG") from err


def _working_size(img: Image.Image) -> Image.Image:
    """`img` with its longer side at most MAX_SIDE (area-averaged; image and mask get the same size)."""
    scale = MAX_SIDE / max(img.size)
    if scale >= 1:
        return img
    return img.resize((max(1, round(img.size[0] * scale)), max(1, round(img.size[1] * scale))), Image.BOX)


def _read_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A depth map as float32 (larger = farther): 8- or 16-bit PNGs scaled to [0, 1], float images as they
    are; resized to the image's (working) grid."""
    img = _open(path)
    if img.mode == "F":  # a float map (e.g. TIFF), in its own units: the depth loss is scale-invariant
        depth = img
    elif img.mode.startswith("I"):  # 16-bit PNG
        depth = Image.fromarray(np.asarray(img).astype(np.float32) / 65535.0, "F")
    else:
        depth = Image.fromarray(np.asarray(img.convert("L")).astype(np.float32) / 255.0, "F")
    if depth.size != (shape[1], shape[0]):
        depth = depth.resize((shape[1], shape[0]), Image.BILINEAR)
    return np.asarray(depth, dtype=np.float32).copy()


def _depth_problem(depth: np.ndarray, inside: np.ndarray) -> str | None:
    """Why a depth map cannot drive the depth loss: NaN/inf values, or no variation inside the mask."""
    values = depth[inside]
    if not np.isfinite(values).all():
        return "has NaN or infinite values inside the mask"
    if values.size < 2 or float(values.max() - values.min()) < 1e-6:
        return "does not vary inside the mask"
    return None


def _place(channel: np.ndarray, box: tuple[int, int, int, int], target: int, canvas: int) -> np.ndarray:
    """Resample `box` of one channel so its longer side is `target`, centred on a canvas x canvas zero image."""
    x0, y0, x1, y1 = box
    scale = target / max(x1 - x0, y1 - y0)
    w2, h2 = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    src = channel.astype(np.float32)
    if (w2, h2) == (x1 - x0, y1 - y0):
        part = src[y0:y1, x0:x1]
    else:
        # PIL's bilinear filter widens with the scale, so downscaling is antialiased (like cv2 INTER_AREA)
        part = np.asarray(Image.fromarray(src, "F").resize((w2, h2), Image.BILINEAR, box=box))
    out = np.zeros((canvas, canvas), np.float32)
    top, left = (canvas - h2) // 2, (canvas - w2) // 2
    out[top:top + h2, left:left + w2] = part
    return out
