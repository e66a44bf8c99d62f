"""Input images -> the reference view: cut out, recentred, resized, with a depth map on the same grid.

A plain photo works too (`prepare_input`): what it lacks is estimated by the models of `cfg.preprocess`, as
the authors' preprocess_image.py does: a caption when there is no prompt (BLIP-2), the cut-out when there
is neither alpha nor mask (CLIPSeg, prompted with the prompt), a depth map when none is given (DPT, on the
whole photo). The result is written as the files a user could have passed (`<stem>_rgba.png`, a 16-bit
`<stem>_depth.png`, `caption.txt`, `preprocess.json`) into a cache folder keyed by the input's bytes and the
models, and read back from there, so a rerun runs no model and the first run and every rerun see the same
input. `c123 preprocess` writes the same files where the user can inspect and fix them.

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

import inspect
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from c123.atomic import atomic_path, write_atomic
from c123.errors import InputError
from c123.images import on_white
from c123.schedules import get_variant

MAX_SIDE = 2048
"""Longest side, in pixels, that preprocessing works at (and the largest default canvas); larger inputs are
downscaled first. The reconstruction renders the reference at a few hundred pixels."""
OBJECT_SHARE = (0.001, 0.99)
"""An estimated cut-out covering less than the first or more than the second share of the photo found no
object, or kept the whole frame: the photo needs a mask instead."""
MIN_SIDE = 8
"""An image narrower than this on either side (1x1, 2x2, 4000x1) holds no shape to reconstruct: refused."""
SMALL_SIDE = 32
"""An image narrower than this on either side is reconstructed with a warning: its reference view is scaled up
from so few pixels that the result can only be coarse."""
MAX_PROMPT = 1000
"""Longest prompt, in characters, that is accepted. Stable Diffusion's and CLIP's text encoders read 77 tokens
(roughly 300 characters of English); a longer prompt is cut with a warning, one beyond this is refused."""
DEPTH_OFF = "the depth loss is off"
"""How every warning about a dropped depth map ends (so a later step does not warn a second time)."""
RECORD = "preprocess.json"
CAPTION = "caption.txt"
Announce = Callable[[str], None]


@dataclass
class Estimate:
    """One part of a reconstruction input that a model supplied."""

    part: str
    """'prompt', 'alpha' or 'depth'."""
    model: str
    """The model id or folder as configured (cfg.preprocess)."""
    result: str
    """What came out, for people: the caption, the share of the photo kept, the depth range."""


@dataclass
class Preprocessing:
    """How an image became the reference view (result.json `preprocessing`)."""

    image: str
    """The image as given."""
    estimates: list[Estimate]
    """What the models supplied, in the order they ran."""
    folder: str
    """Where the preprocessed files are (`c123 reconstruct` accepts them as they are)."""
    key: str
    """Cache key: the input files' bytes, the given prompt, the models and settings, the code."""
    cached: bool = False
    """True when read back from the cache: no model ran."""
    files: dict[str, str] = field(default_factory=dict)
    """The preprocessed files by role: rgba, depth, caption."""


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
    preprocessing: Preprocessing | None = None
    """What models estimated (None when the input was complete)."""


@dataclass
class WorkingInput:
    """An input's files at working size, before recentring."""

    path: Path
    rgb: np.ndarray
    """uint8 HxWx3, the image's colours."""
    alpha: np.ndarray | None
    """uint8 HxW from the mask or the image's alpha channel; None when neither gives one."""
    alpha_from_image: bool
    """The alpha is the image's own channel (its colours under transparent pixels mean nothing)."""
    depth: np.ndarray | None
    """float32 HxW from the depth file, or None."""
    no_alpha: str = ""
    """Why there is no alpha: 'has no alpha channel' or 'is fully opaque'."""
    warnings: list[str] = field(default_factory=list)
    """What the user is told about the files as read (e.g. a very small image)."""


def read_input(image, mask=None, depth=None) -> WorkingInput:
    """Decode the image (upright), its mask or alpha channel and its depth map at working size."""
    image = Path(image)
    pixels = _open(image)
    full_size, has_alpha = pixels.size, "A" in pixels.getbands() or "transparency" in pixels.info
    mode = "RGBA" if has_alpha else "RGB"
    work = _working_size(pixels if pixels.mode == mode else pixels.convert(mode))
    del pixels  # the full-size decode is not needed past this point
    warnings = _size_warnings(image, full_size)
    alpha, no_alpha = None, ""
    if mask is not None:
        mask_img = _open(Path(mask))
        if mask_img.size != full_size:
            raise InputError(f"{mask} is {mask_img.size[0]}x{mask_img.size[1]} but {image} is "
                             f"{full_size[0]}x{full_size[1]} (after EXIF orientation): pass a mask of the "
                             "image's size")
        alpha = np.asarray(_working_size(mask_img.convert("L")))
        if not (alpha > 127).any():
            raise InputError(f"the mask {mask} is empty (no pixel above 127, i.e. nothing is the object): pass a "
                             "mask that is white on the object")
    elif has_alpha:
        alpha = np.asarray(work.getchannel("A"))
        if alpha.min() == 255:
            alpha, no_alpha = None, "is fully opaque"
        elif not (alpha > 127).any():
            raise InputError(f"{image} has an alpha channel with no pixel above 127 (nothing is opaque, so there is no "
                             "object): pass the image with the object opaque, or an RGB image with --mask MASK.png")
    else:
        no_alpha = "has no alpha channel"
    rgb = np.asarray(work.convert("RGB"))
    depth_map = _read_depth(Path(depth), rgb.shape[:2]) if depth is not None else None
    return WorkingInput(image, rgb, alpha, mask is None and has_alpha, depth_map, no_alpha, warnings)


def load_input(image, mask=None, depth=None, prompt: str = "", case_id: str | None = None,
               size: int | None = None, border_ratio: float = 0.2, recenter: bool = True) -> ReconstructionInput:
    """Read an RGBA image (or RGB + mask) and optional depth PNG into a recentred reference view.

    A given mask replaces the image's own alpha. `size` is the output canvas side (default: the longer
    side of the input). With recenter=False the image is only padded to a square and resized.
    """
    files = read_input(image, mask, depth)
    if files.alpha is None:
        raise _no_alpha(files)
    inp = assemble(files, files.alpha, files.depth, size, border_ratio, recenter, f"depth map {depth}")
    inp.case_id, inp.prompt = case_id or Path(image).stem, prompt
    inp.sources.update({k: str(v) for k, v in (("mask", mask), ("depth", depth)) if v is not None})
    return inp


def assemble(files: WorkingInput, alpha: np.ndarray, depth_map: np.ndarray | None, size: int | None,
             border_ratio: float, recenter: bool, depth_name: str = "the depth map") -> ReconstructionInput:
    """Recentre (or pad to a square) the image, `alpha` and `depth_map` with one crop box and scale; a depth
    map that cannot drive the depth loss is dropped with a warning naming it (`depth_name`)."""
    if not (alpha > 127).any():
        raise InputError(f"the mask of {files.path} is empty (no pixel with alpha > 0.5): check the mask file")
    height, width = alpha.shape
    canvas = size or min(max(height, width), MAX_SIDE)
    if recenter:
        rows, cols = np.nonzero(alpha > 127)
        box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
        target = int(canvas * (1 - border_ratio))
    else:
        box, target = (0, 0, width, height), canvas

    channels = [files.rgb[..., c] for c in range(3)] + [alpha]
    out = np.stack([_place(ch, box, target, canvas) for ch in channels], -1)
    rgba = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    warnings = list(files.warnings)
    if depth_map is not None:
        depth_map = _place(depth_map, box, target, canvas)
        depth_map[rgba[..., 3] <= 127] = 0.0
        problem = _depth_problem(depth_map, rgba[..., 3] > 127)
        if problem:
            warnings.append(f"{depth_name} {problem}: {DEPTH_OFF}")
            depth_map = None
    return ReconstructionInput(case_id=files.path.stem, rgba=rgba, depth=depth_map,
                               sources={"image": str(files.path)}, warnings=warnings)


# ---- a plain photo: estimate what is missing, once ---------------------------------------------
def prepare_input(image, mask=None, depth=None, prompt: str = "", *, cfg, case_id: str | None = None,
                  recenter: bool = True, need_prompt: bool | None = None, announce: Announce | None = None,
                  size: int | None = None) -> ReconstructionInput:
    """The reference view of an image, with what it lacks estimated by cfg.preprocess's models (cached).

    An input with an alpha (or mask), a depth map (or no depth model) and a prompt (or no need of one:
    `need_prompt`, by default whether cfg's variant uses Stable Diffusion, and no cut-out to prompt) is
    `load_input` as it is. Otherwise the missing parts are estimated into cache_root()/preprocess/KEY once
    and read back from there; `announce` gets one line per step.
    """
    if need_prompt is None:
        need_prompt = "sd" in get_variant(cfg.schedule.variant).priors
    say = announce or (lambda line: None)
    check_prompt_length(prompt, case_id or Path(image).stem)
    files = read_input(image, mask, depth)
    parts = missing_parts(files, prompt, cfg.preprocess, need_prompt)
    if need_prompt and not prompt.strip() and "prompt" not in parts:  # before any model runs
        raise InputError(f"empty prompt for {files.path} and no caption model (preprocess.caption_model): Stable "
                         "Diffusion and the CLIP detector need a text prompt; pass --prompt TEXT (or use --variant "
                         "3d-only)")
    if not parts:
        return load_input(image, mask, depth, prompt, case_id, size, cfg.preprocess.border_ratio, recenter)
    inp = cached_preprocessing(files, mask, depth, prompt, parts, cfg, recenter, size, say, case_id)
    inp.sources.update({"image": str(image), **{k: str(v) for k, v in (("mask", mask), ("depth", depth)) if v}})
    return inp


def cached_preprocessing(files: WorkingInput, mask, depth, prompt: str, parts: list[str], cfg, recenter: bool = True,
                         size: int | None = None, announce: Announce | None = None,
                         case_id: str | None = None) -> ReconstructionInput:
    """The preprocessing of `files` (see write_preprocessed) from cache_root()/preprocess/KEY, computed there
    first when missing; a damaged cached folder is set aside and computed again (c123.cache.cached_read)."""
    from c123.cache import cached_read

    say = announce or (lambda line: None)
    key = preprocess_key(files.path, mask, depth, prompt, parts, cfg.preprocess, recenter, size)

    def read(folder: Path, cached: bool) -> ReconstructionInput:
        inp = load_preprocessed(folder, case_id or files.path.stem, cached)
        if cached:
            say(f"{files.path.name}: reusing its preprocessing from {folder} (no model runs)")
        return inp

    return cached_read("preprocess", key, lambda tmp: write_preprocessed(
        files, prompt, parts, cfg, tmp, recenter=recenter, size=size, key=key, announce=say), read, say)


def check_prompt_length(prompt: str, name: str) -> None:
    """InputError for a prompt longer than MAX_PROMPT characters (before any model runs)."""
    if len(prompt) > MAX_PROMPT:
        raise InputError(f"the prompt of {name} is {len(prompt):,} characters: Stable Diffusion and CLIP read only its "
                         f"first 77 tokens (about 300 characters); pass a prompt of at most {MAX_PROMPT:,} characters, "
                         "ideally one short sentence")


def missing_parts(files: WorkingInput, prompt: str, cfg, need_prompt: bool = True) -> list[str]:
    """What the models of `cfg` (a PreprocessConfig) must supply, in the order they run: the prompt first
    (the background remover is prompted with it), then the cut-out, then depth (it is normalised on the cut-out).
    InputError for an image without alpha or mask when no background remover is configured."""
    if files.alpha is None and not cfg.background_model:
        raise _no_alpha(files)
    parts = []
    cut_out = files.alpha is None
    if not prompt.strip() and (need_prompt or cut_out) and cfg.caption_model:
        parts.append("prompt")
    if cut_out:
        parts.append("alpha")
    if files.depth is None and cfg.depth_model:
        parts.append("depth")
    return parts


def preprocess_key(image: Path, mask, depth, prompt: str, parts: list[str], cfg, recenter: bool,
                   size: int | None) -> str:
    """Cache key of a preprocessing: the input files' bytes, the prompt, what is estimated and by which model
    and settings, the recentring, and the source of the code that does it."""
    from c123.cache import digest, file_digest
    from c123.priors import background, caption, depth as depth_prior

    models = {"prompt": (cfg.caption_model, cfg.caption_max_tokens), "alpha": (cfg.background_model, cfg.mask_threshold),
              "depth": (cfg.depth_model,)}
    code = "".join(inspect.getsource(m) for m in (sys.modules[__name__], background, caption, depth_prior))
    return digest(file_digest(image), file_digest(mask), file_digest(depth), prompt,
                  json.dumps({part: models[part] for part in parts}), json.dumps([cfg.border_ratio, recenter, size]),
                  code)


def write_preprocessed(files: WorkingInput, prompt: str, parts: list[str], cfg, out_dir, *, recenter: bool = True,
                       size: int | None = None, key: str = "", announce: Announce | None = None) -> Preprocessing:
    """Estimate `parts` (see missing_parts) with cfg.preprocess's models and write the result into `out_dir`:
    `<stem>_rgba.png`, `<stem>_depth.png` (16-bit, when there is depth), caption.txt (when there is a
    prompt) and preprocess.json. InputError when the caption is empty or the cut-out finds no object."""
    from c123.priors.weights import quiet_loading
    from c123.provenance import resolve_device

    say = announce or (lambda line: None)
    quiet_loading()
    from c123.priors.tiny import ensure_tiny_models
    ensure_tiny_models(cfg)
    _resolve_models(parts, cfg)  # a missing model fails here, before any model runs
    device, out, estimates = resolve_device(cfg.train.device), Path(out_dir), []
    alpha, depth_map = files.alpha, files.depth
    if "prompt" in parts:
        prompt = _caption(files, cfg, device, say, estimates)
    if "alpha" in parts:
        alpha = _cut_out(files, prompt, cfg, device, say, estimates)
    if "depth" in parts:
        depth_map = _depth(files, alpha, cfg, device, say, estimates)
    depth_name = f"the depth estimated with {cfg.preprocess.depth_model}" if "depth" in parts else "the given depth map"
    inp = assemble(files, alpha, depth_map, size, cfg.preprocess.border_ratio, recenter, depth_name)
    written = write_input_files(inp, prompt, out, files.path.stem)
    record = Preprocessing(str(files.path), estimates, str(out), key, files=written)
    saved = {k: v for k, v in asdict(record).items() if k not in ("folder", "cached")}  # known when read back
    write_atomic(out / RECORD, json.dumps({**saved, "warnings": inp.warnings}, indent=2))
    return record


def _resolve_models(parts: list[str], cfg) -> None:
    """Find every model `parts` needs on this machine, in cfg.prior.model_cache like the priors
    (WeightsMissingError naming the first one missing)."""
    from c123.priors import background, caption, depth
    from c123.priors.weights import resolve

    pre = cfg.preprocess
    models = {"prompt": (pre.caption_model, caption.WHAT), "alpha": (pre.background_model, background.WHAT),
              "depth": (pre.depth_model, depth.WHAT)}
    for part in parts:
        resolve(*models[part], cache_dir=cfg.prior.model_cache)


def _caption(files: WorkingInput, cfg, device, say: Announce, estimates: list[Estimate]) -> str:
    """The caption model's prompt for the photo; InputError when it says nothing."""
    from c123.priors.caption import caption_image

    pre = cfg.preprocess
    say(f"{files.path.name}: no prompt: captioning it with {pre.caption_model}")
    prompt = caption_image(files.rgb, pre.caption_model, pre.caption_max_tokens, cfg.prior.precision, device,
                           cache_dir=cfg.prior.model_cache)
    if not prompt:
        raise InputError(f"{files.path}: the caption model {pre.caption_model} returned an empty caption: "
                         "pass --prompt TEXT describing the object")
    say(f"{files.path.name}: caption: {prompt}")
    estimates.append(Estimate("prompt", pre.caption_model, f"caption: {prompt}"))
    return prompt


def _cut_out(files: WorkingInput, prompt: str, cfg, device, say: Announce, estimates: list[Estimate]) -> np.ndarray:
    """The background remover's alpha of the object the prompt names; InputError when it finds no object or
    keeps the whole frame."""
    from c123.priors.background import remove_background

    pre = cfg.preprocess
    say(f"{files.path.name} {files.no_alpha} and no mask was given: removing the background with "
        f"{pre.background_model}")
    alpha = remove_background(files.rgb, prompt, pre.background_model, pre.mask_threshold, device,
                              cache_dir=cfg.prior.model_cache)
    share = float((alpha > 127).mean())
    lo, hi = OBJECT_SHARE
    if not lo <= share <= hi:
        found = "found no object" if share < lo else f"kept the whole frame ({share:.0%} of it)"
        raise InputError(f"{files.path}: background removal with {pre.background_model} {found}: pass --mask "
                         "MASK.png (white on the object) or an RGBA image with the background transparent")
    estimates.append(Estimate("alpha", pre.background_model, f"kept {share:.1%} of the photo (prompt: {prompt})"))
    return alpha


def _depth(files: WorkingInput, alpha: np.ndarray, cfg, device, say: Announce,
           estimates: list[Estimate]) -> np.ndarray:
    """The depth model's map of the image, normalised on the object."""
    from c123.priors.depth import estimate_depth

    pre = cfg.preprocess
    say(f"{files.path.name}: no depth map: estimating it with {pre.depth_model}")
    # an RGBA's colours under transparent pixels mean nothing: the model sees it on white; a photo is whole
    image = on_white(files.rgb, alpha) if files.alpha_from_image else files.rgb
    depth_map = estimate_depth(image, alpha > 127, pre.depth_model, device, cache_dir=cfg.prior.model_cache)
    estimates.append(Estimate("depth", pre.depth_model, "relative depth, flipped from disparity, 0..1 on the object"))
    return depth_map


def write_input_files(inp: ReconstructionInput, prompt: str, out: Path, stem: str) -> dict[str, str]:
    """The files `c123 reconstruct` reads: `<stem>_rgba.png`, `<stem>_depth.png` (16-bit; larger = farther,
    0 off the object) and caption.txt; returns their names by role."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"rgba": f"{stem}_rgba.png"}
    with atomic_path(out / written["rgba"]) as tmp:
        Image.fromarray(inp.rgba, "RGBA").save(tmp, format="PNG")
    if inp.depth is not None:
        written["depth"] = f"{stem}_depth.png"
        depth16 = np.rint(np.clip(inp.depth, 0, 1) * 65535).astype(np.uint16)
        with atomic_path(out / written["depth"]) as tmp:
            Image.fromarray(depth16).save(tmp, format="PNG")
    if prompt.strip():
        written["caption"] = CAPTION
        write_atomic(out / CAPTION, prompt.strip() + "\n")
    return written


def load_preprocessed(folder: Path, case_id: str, cached: bool) -> ReconstructionInput:
    """The reference view a preprocessing folder holds, exactly as its files read (no second recentring)."""
    data = json.loads((folder / RECORD).read_text())
    files = data["files"]
    prompt = (folder / files["caption"]).read_text().strip() if "caption" in files else ""
    depth = folder / files["depth"] if "depth" in files else None
    inp = load_input(folder / files["rgba"], depth=depth, prompt=prompt, case_id=case_id, recenter=False)
    inp.warnings = data["warnings"] + inp.warnings
    inp.preprocessing = Preprocessing(data["image"], [Estimate(**e) for e in data["estimates"]], str(folder),
                                      data["key"], cached, files)
    return inp


def _no_alpha(files: WorkingInput) -> InputError:
    return InputError(f"{files.path} {files.no_alpha} and no mask was given: pass --mask MASK.png or an RGBA image "
                      "with the background transparent")


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image, upright as its EXIF orientation says; every failure is an InputError
    naming the file."""
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file: pass the image inside it")
    if not path.is_file():
        raise InputError(f"{path} does not exist: check the path")
    try:
        img = Image.open(path)
        img.load()
        ImageOps.exif_transpose(img, in_place=True)
        return img
    except Image.DecompressionBombError as err:
        # PIL refuses above twice MAX_IMAGE_PIXELS (and only warns between the two): quote the limit it applied
        raise InputError(f"{path} is too large to decode safely (more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels, "
                         "PIL's decompression-bomb limit): downscale it (c123 works on it at "
                         f"{MAX_SIDE} on its longer side anyway)") from err
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise InputError(f"{path} is not a readable image ({type(err).__name__}): pass a PNG or JPEG") from err


def _size_warnings(path: Path, size: tuple[int, int]) -> list[str]:
    """InputError for an image too small to hold a shape; a warning for a merely small one."""
    width, height = size
    if min(width, height) < MIN_SIDE:
        raise InputError(f"{path} is {width}x{height} pixels: too small to reconstruct an object from; pass an "
                         f"image at least {MIN_SIDE} pixels on each side (a few hundred is typical)")
    if min(width, height) < SMALL_SIDE:
        return [f"{path} is only {width}x{height} pixels: the reference view is scaled up from it and the result "
                f"will be coarse (an image at least {SMALL_SIDE} pixels on each side, ideally a few hundred, is better)"]
    return []


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
    """Why a depth map cannot drive the depth loss: NaN/inf values, or no variation inside the mask.

    Partly invalid maps are dropped whole: the depth loss (c123.losses.pearson_depth_loss, as the official
    one) compares every pixel inside the object's mask and has no mask of valid depth to skip some."""
    values = depth[inside]
    bad = int((~np.isfinite(values)).sum())
    if bad:
        return (f"has NaN or infinite values at {bad:,} of the {values.size:,} pixels inside the mask (the depth "
                "loss compares every pixel of the object and cannot skip them; fix or fill those pixels)")
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
