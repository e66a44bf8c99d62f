"""Typed configuration of a reconstruction, with the named presets `paper`, `fast`, `tiny` and `verify`.

`paper` holds every published default of docs/METHOD.md section 2 (following the authors' code where it
differs from the paper). `fast` trades iterations and resolution for speed on one GPU. `tiny` runs the
whole method on CPU with the tiny random-weight models that `c123 models tiny DIR` writes. `verify`
reconstructs the synthetic scenes on CPU with the oracle as the 3D prior (docs/METHOD.md section 6): its
numbers have a right answer.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Literal

from c123.errors import C123Error, shown


# ---- what a field allows, declared at the field: `field(default=..., metadata=at_least(1))` --------------
# c123.config_checks derives every check from these and the fields' types (a Literal lists a choice field's
# values); c123.config_files prints them in `--help` and `c123 config show`.
@dataclass(frozen=True)
class Bounds:
    """The range of a number, or of both ends of a (low, high) pair; an open end is itself excluded."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    unit: str = ""


@dataclass(frozen=True)
class TableChoices:
    """Names read when checked from a table of another module ('c123.schedules:VARIANTS': its keys), so this
    module imports none of the modules that import it; `also`: more allowed names; `wording`: the sentence after
    'must be' ({table}: the table's names), by default 'one of' every name."""

    table: str
    also: tuple[str, ...] = ()
    wording: str = ""


@dataclass(frozen=True)
class Rule:
    """Any other rule of one field: a predicate on its value and the sentence printed when a value fails it."""

    ok: Callable[[Any], bool]
    text: str


def at_least(lo: float, *, not_above: str | None = None) -> dict[str, Any]:
    """Field metadata: value >= lo (both ends of a pair); not_above: a sibling field this one must not exceed."""
    return {"allowed": Bounds(lo), **({"not_above": not_above} if not_above else {})}


def above(lo: float) -> dict[str, Any]:
    """Field metadata: value > lo."""
    return {"allowed": Bounds(lo, lo_open=True)}


def within(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, unit: str = "") -> dict[str, Any]:
    """Field metadata: lo <= value <= hi (< or > at an open end); `unit` follows the range in messages."""
    return {"allowed": Bounds(lo, hi, lo_open, hi_open, unit)}


def one_of_table(table: str, *, also: tuple[str, ...] = (), wording: str = "") -> dict[str, Any]:
    """Field metadata: one of the names of `table` ('module:NAME') or of `also`."""
    return {"allowed": TableChoices(table, also, wording)}


def rule(ok: Callable[[Any], bool], text: str) -> dict[str, Any]:
    """Field metadata: any other predicate and its sentence."""
    return {"allowed": Rule(ok, text)}


ZERO123_MODELS = {"zero123": "bennyguo/zero123-xl-diffusers", "stable-zero123": "ashawkey/stable-zero123-diffusers"}
"""The default weights of each prior.zero123_family: Zero-1-to-3 XL as the paper's code loads it, Stable Zero123
as DreamGaussian loads it (dreamgaussian main.py, `stable_zero123: True`)."""


def zero123_model_id(prior: PriorConfig) -> str:
    """The 3D prior's weights a config loads: prior.zero123_model, except that a zero123_model left at the
    Zero-1-to-3 default means the default of the chosen family (so `--set prior.zero123_family=stable-zero123`
    alone loads ashawkey/stable-zero123-diffusers)."""
    if prior.zero123_model == ZERO123_MODELS["zero123"]:
        return ZERO123_MODELS[prior.zero123_family]
    return prior.zero123_model


ORACLE_FROM_CASE = "case"
"""prior.oracle_scene of a config that takes the oracle's scene from each synthetic case."""

TINY_MODELS_ENV = "C123_TINY_MODELS"
"""Environment variable naming the folder of the tiny random models (the `tiny` and `verify` presets)."""


def tiny_models_dir() -> str:
    """Where the tiny presets' models live: $C123_TINY_MODELS, else ~/.cache/c123/tiny-models."""
    return os.environ.get(TINY_MODELS_ENV) or "~/.cache/c123/tiny-models"



ELEVATION_LIMIT = 90.0
"""An input view's elevation must lie strictly between -ELEVATION_LIMIT and +ELEVATION_LIMIT degrees (the
reference camera's polar angle 90 - elevation strictly between 0 and 180)."""
ELEVATION_ESTIMATE = "estimate"
"""The elevation value that asks for the input view's elevation to be estimated from the image with the 3D
prior's own views (camera.estimate_elevation; c123/elevation.py)."""


def elevation_value(value: Any, where: str, fix: str, error: type[C123Error] = C123Error) -> float | str | None:
    """An input view's elevation from a flag, a table cell or a parameter: a number of degrees strictly between
    -90 and 90, ELEVATION_ESTIMATE ('estimate': estimate it), or None for blank. Anything else is one `error`
    line naming `where` and ending with `fix`."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() == ELEVATION_ESTIMATE:
        return ELEVATION_ESTIMATE
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or abs(number) >= ELEVATION_LIMIT:
        raise error(f"{where}: elevation {shown(value)} is not a number of degrees strictly between "
                    f"-{ELEVATION_LIMIT:g} and {ELEVATION_LIMIT:g} (polar = 90 - elevation): {fix}")
    return number


@dataclass
class CameraConfig:
    """Reference and novel-view camera distributions (degrees, world units); main.py / nerf/provider.py."""

    ref_polar: float = field(default=90.0, metadata=within(0, 180, lo_open=True, hi_open=True, unit="degrees"))
    """Polar angle of the reference (input) camera from +y, 90 - its elevation; main.py --default_polar. The
    official default 90 (elevation 0) in every preset; `c123 reconstruct --elevation DEG`, a dataset table's
    `elevation` column or the benchmark's `elevation` parameter set 90 - DEG. The priors' relative cameras,
    the progressive view ranges, the detector's views and the turntable all start from it."""
    estimate_elevation: bool = False
    """Estimate the input view's elevation from the image before training (c123/elevation.py: One-2-3-45's
    method with the 3D prior's own views) and set ref_polar from it; a low-confidence estimate keeps elevation 0
    with a recorded warning. Off in `paper` (the official fixed elevation 0) and `tiny` (random weights see no
    geometry); on in `fast` and `verify`. An elevation that is given (`--elevation DEG`, a table's number, the
    benchmark's parameter) turns it off; `--elevation estimate` or a table's 'estimate' turns it on."""
    ref_azimuth: float = field(default=0.0, metadata=within(-360, 360, unit="degrees"))
    """Azimuth of the reference camera (0: the input shows the object's front, from +z; a positive value
    moves the camera to its own right around the object); --default_azimuth, `c123 reconstruct --azimuth`."""
    ref_radius: float = field(default=3.2, metadata=above(0))
    """Distance of the reference camera from the origin; --default_radius."""
    fovy: float = field(default=20.0, metadata=within(0, 180, lo_open=True, hi_open=True, unit="degrees"))
    """Vertical field of view of every camera (fixed when Zero-1-to-3 guides; main.py); --default_fovy."""
    radius_range: tuple[float, float] = field(default=(3.0, 3.5), metadata=above(0))
    """Novel-view radius range (full extent); --radius_range."""
    polar_range: tuple[float, float] = field(default=(45.0, 105.0), metadata=within(0, 180))
    """Novel-view polar range (full extent); --theta_range."""
    azimuth_range: tuple[float, float] = field(default=(-180.0, 180.0), metadata=within(-360, 360))
    """Novel-view azimuth range (full extent); --phi_range."""
    progressive_start: float = field(default=0.2, metadata=within(0, 1))
    """Fraction r of the full ranges at step 0 of the NeRF stage; --progressive_view_init_ratio."""
    progressive_rate: float = field(default=2.0, metadata=at_least(0))
    """r = min(1, start + rate * step / nerf_iters): full ranges at 40% of the NeRF stage (nerf/utils.py
    train_step); the DMTet stage always samples the full ranges (main.py sets progressive_view off)."""


@dataclass
class NerfConfig:
    """Instant-NGP style field as the official nerf/network_grid.py: hash grid + MLP, exp density with a blob."""

    num_levels: int = field(default=16, metadata=at_least(1))
    """Hash-grid levels (gridencoder num_levels)."""
    level_dim: int = field(default=2, metadata=at_least(1))
    """Features per level."""
    log2_hashmap_size: int = field(default=19, metadata=within(1, 32))
    """log2 of the hash table size per level."""
    base_resolution: int = field(default=16, metadata=at_least(1, not_above="finest_resolution"))
    """Coarsest grid resolution."""
    finest_resolution: int = 2048
    """Finest grid resolution per unit of bound (the official desired_resolution is 2048 * bound)."""
    interpolation: Literal["smoothstep", "linear"] = "smoothstep"
    """Corner weights of the hash grid: 'smoothstep' (network_grid.py) or 'linear' (Instant-NGP)."""
    progressive_level: bool = True
    """Coarse-to-fine hash levels: the loop activates min(1, 0.25 + 2 * stage progress) of them, in each stage."""
    hidden_dim: int = field(default=64, metadata=at_least(1))
    """Width of the density/albedo MLP (sigma_net)."""
    num_layers: int = field(default=3, metadata=at_least(1))
    """Depth of the density/albedo MLP (sigma_net)."""
    bound: float = field(default=1.0, metadata=above(0))
    """The field lives in [-bound, bound]^3."""
    blob_density: float = field(default=10.0, metadata=at_least(0))
    """Peak of the Gaussian density prior at the origin (main.py --blob_density)."""
    blob_radius: float = field(default=0.2, metadata=above(0))
    """Radius (std) of the Gaussian density prior (main.py --blob_radius)."""
    normal_eps: float = 1e-2
    """Step of the central differences that give normals (network_grid.py finite_difference_normal)."""
    num_samples: int = field(default=64, metadata=at_least(1))
    """Stratified samples per ray."""
    num_importance: int = field(default=32, metadata=at_least(0))
    """Extra importance samples per ray (0 disables the second pass)."""
    backend: Literal["auto", "torch", "triton", "tcnn"] = "auto"
    """Hash-grid backend: 'auto' (the fused Triton kernels for CUDA points when triton imports, else 'torch'),
    'torch', 'triton' or 'tcnn' (tinycudann: faster, but its own lattice alignment, not the official one)."""
    occupancy_grid: bool = True
    """Skip samples outside occupied cells of a density grid, as the official `-O` (cuda_ray) renderer does."""
    occupancy_resolution: int = field(default=128, metadata=at_least(2))
    """Cells per side of the density grid (renderer.py grid_size)."""
    occupancy_threshold: float = field(default=10.0, metadata=at_least(0))
    """A cell is occupied when its density exceeds min(mean density, this) (--density_thresh)."""
    occupancy_every: int = field(default=16, metadata=at_least(1))
    """Refresh the density grid every this many steps (--update_extra_interval)."""
    occupancy_mode: Literal["auto", "compact", "mask"] = "auto"
    """How samples in empty cells are skipped: 'compact' (only occupied samples reach the field: the fewest
    evaluations, one host sync per render pass), 'mask' (every sample is evaluated, empty ones zeroed: no host
    sync, fixed shapes) or 'auto' (compact, but mask on CUDA with grad_chunk_rays > 0, where a chunk bounds the
    memory: docs/METHOD.md section 7); the same images."""
    grad_chunk_rays: int = field(default=0, metadata=at_least(0))
    """Training renders: 0 keeps every ray's field passes in one graph until the backward; N > 0 renders chunks of
    N rays (and the 3D normal smoothness N rays' samples at a time) and recomputes each chunk in the backward
    (checkpointing): the memory of one chunk instead of the whole image, the same gradients up to float
    rounding, about a third more field work (docs/METHOD.md section 7)."""


@dataclass
class DMTetConfig:
    """Refinement stage as the official renderer.py (init_tet, run_dmtet): tet SDF + deformation, rasterised."""

    tet_resolution: int = field(default=256, metadata=at_least(2))
    """Tet grid size (official tet_grid_size): A15 lattice with grid step 2 / size over [-1,1]^3, multiple of 4."""
    render_size: int = field(default=1024, metadata=at_least(1))
    """Rasterised novel-view size."""
    init_density_threshold: float = 10.0
    """Cap of the init threshold: threshold = min(mean NeRF density, cap); sdf = clamp(density - threshold, -1, 1)."""
    mean_density_resolution: int = 128
    """Grid on which the mean NeRF density is probed (the official cuda_ray density grid is 128^3)."""
    scale_margin: float = 0.1
    """The grid is rescaled to the bounding box of the occupied vertices plus this margin per axis (init_tet)."""
    deform_scale: float = field(default=1.0, metadata=at_least(0))
    """Vertex offsets are deform_scale * tanh(deform) / tet_resolution (run_dmtet: tanh(deform) / tet_grid_size)."""
    backend: Literal["auto", "torch", "nvdiffrast"] = "auto"
    """Rasteriser backend: 'auto' (nvdiffrast if importable and on CUDA), 'torch' or 'nvdiffrast'."""


@dataclass
class LossConfig:
    """Reference-view losses and regularisers (main.py lambdas in the image+text setup; nerf/utils.py)."""

    rgb: float = field(default=1000.0, metadata=at_least(0))
    """Weight of the reference-view rgb MSE; --lambda_rgb."""
    mask: float = field(default=500.0, metadata=at_least(0))
    """Weight of the reference-view mask MSE; --lambda_mask."""
    depth: float = field(default=10.0, metadata=at_least(0))
    """Weight of 1 - Pearson(depth) on the mask, ramped by min(1, step/iters); 0 in DMTet; --lambda_depth."""
    entropy: float = field(default=1.0, metadata=at_least(0))
    """Binary entropy of the per-sample compositing weights (NeRF), ramped by min(1, entropy_ramp *
    step/iters); main.py sets lambda_entropy = 1 for image inputs."""
    entropy_ramp: float = field(default=2.0, metadata=at_least(0))
    """Slope of the entropy ramp (nerf/utils.py train_step: min(1, 2 * global_step / iters))."""
    orientation: float = field(default=1.0, metadata=at_least(0))
    """Orientation regulariser, mean over all samples of sg(w) max(0, n.d)^2 (NeRF; renderer.py run_cuda)."""
    normal_smooth_3d: float = field(default=20.0, metadata=at_least(0))
    """Mean |n(x) - n(x + 0.01 noise)| over the samples (NeRF); main.py sets 20 with a text prompt."""
    normal_smooth_2d: float = field(default=10.0, metadata=at_least(0))
    """2D smoothness of the normal image (n+1)/2 composited with detached density: MSE to its 9-px Gaussian
    blur plus squared finite differences (NeRF); --lambda_2d_normal_smooth."""
    mesh_normal_consistency: float = field(default=100.0, metadata=at_least(0))
    """Mesh normal consistency (DMTet); --lambda_mesh_normal."""
    mesh_laplacian: float = field(default=100.0, metadata=at_least(0))
    """Mesh Laplacian smoothness (DMTet); --lambda_mesh_laplacian."""


@dataclass
class PriorConfig:
    """Where the diffusion/CLIP models come from and how SDS uses them."""

    zero123_model: str = ZERO123_MODELS["zero123"]
    """The 3D prior's weights in diffusers format (a folder of zero123_family's layout): Hub id or local
    directory. Left at this default, the model of the family is loaded (ZERO123_MODELS, `zero123_model_id`)."""
    zero123_family: Literal["zero123", "stable-zero123"] = "zero123"
    """Which view-conditioned 3D prior guides: 'zero123' (Zero-1-to-3 XL, the paper's; camera vector [d polar,
    sin d az, cos d az, d radius]) or 'stable-zero123' (Stability AI's Stable Zero123, non-commercial licence;
    4th entry the input's absolute polar; docs/METHOD.md "Stable Zero123")."""
    sd_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Stable Diffusion 2.1 base: Hub id or local directory."""
    clip_model: str = "openai/clip-vit-base-patch16"
    """CLIP for the boundary detector: Hub id or local directory."""
    guidance_scale_3d: float = field(default=10.0, metadata=at_least(0))
    """Classifier-free guidance scale of Zero-1-to-3."""
    guidance_scale_2d: float = field(default=10.0, metadata=at_least(0))
    """Classifier-free guidance scale of Stable Diffusion."""
    t_range_nerf: tuple[float, float] = field(default=(0.2, 0.6), metadata=within(0, 1))
    """SDS timestep range (fraction of the schedule) in the NeRF stage."""
    t_range_dmtet: tuple[float, float] = field(default=(0.2, 0.5), metadata=within(0, 1))
    """SDS timestep range in the DMTet stage."""
    zero123_size: int = field(default=256, metadata=at_least(8))
    """Zero-1-to-3 input resolution."""
    sd_size: int = field(default=512, metadata=at_least(8))
    """Stable Diffusion input resolution."""
    clip_size: int = field(default=128, metadata=at_least(1))
    """Renders are resized to this before the detector's CLIP (the encoder then resizes to its own)."""
    angle_scaled_gradient: bool = True
    """Scale the Zero-1-to-3 gradient by (angle to the reference)/180 (zero123_utils.py train_step, 'angle')."""
    zero123_timestep: Literal["max", "uniform"] = "max"
    """Zero-1-to-3 t: 'max' = int(1000 * t_range[1]) every step (zero123_utils.py train_step), or 'uniform'."""
    sd_view_prompt: Literal["interpolate", "bucket"] = "interpolate"
    """SD text embedding: 'interpolate' front/side/back by |delta azimuth| (nerf/utils.py train_step) or 'bucket'."""
    render_latents: Literal["sample", "mean"] = "sample"
    """Render latents: 'sample' of the VAE posterior (sd_utils/zero123_utils encode_imgs) or its 'mean'."""
    zero123_variant: Literal["fp16_ema", "default"] = "fp16_ema"
    """Zero-1-to-3 weights file: 'fp16_ema' (the EMA weights the official loads, upcast) or 'default'."""
    precision: Literal["fp16", "fp32"] = "fp16"
    """CUDA 'fp16' = -O: SD and detector CLIP fp16, Zero-1-to-3 fp32 under fp16 autocast; or 'fp32'. CPU: fp32."""
    oracle_scene: str | None = field(default=None, metadata=one_of_table(
        "c123.synthetic:SCENES", also=(ORACLE_FROM_CASE,), wording="null, '{also}' or a synthetic scene ({table})"))
    """Verification only: replace Zero-1-to-3 with an oracle rendering this synthetic scene; 'case': the scene
    of each synthetic case (the benchmark fills it in)."""
    oracle_elevation: float | None = field(default=None, metadata=within(-90, 90, lo_open=True, hi_open=True,
                                                                         unit="degrees"))
    """Verification only: the elevation the input image was really rendered from. The oracle decodes each
    relative camera vector from this true camera, as Zero-1-to-3 (which sees only the image) answers relative to
    the image's real viewpoint, whatever camera.ref_polar assumes. null: the assumed camera; the benchmark
    fills in a synthetic case's true elevation."""
    oracle_azimuth: float | None = field(default=None, metadata=within(-360, 360, unit="degrees"))
    """Verification only: the azimuth the input image was really rendered from (as oracle_elevation; null:
    camera.ref_azimuth; the synthetic references are rendered at 0)."""
    model_cache: str | None = None
    """Hugging Face cache folder the Hub ids are read from on the machine that runs the case (None: HF_HUB_CACHE,
    else ~/.cache/huggingface/hub); a shared mount gives every node one cache. Not part of the config hash."""


@dataclass
class PreprocessConfig:
    """A plain photo -> the reference view: models fill in a missing cut-out, depth map or prompt
    (preprocess_image.py of the authors' code; stable-dreamfusion's BLIP-2 captioner); '' turns one off."""

    background_model: str = "CIDAS/clipseg-rd64-refined"
    """Background remover for an image without alpha or mask: CLIPSeg prompted with the text prompt."""
    mask_threshold: float = field(default=0.5, metadata=within(0, 1, lo_open=True, hi_open=True))
    """The object is where the background remover's probability exceeds this."""
    depth_model: str = "Intel/dpt-hybrid-midas"
    """Monocular depth (DPT-hybrid, as the official Omnidata dpt_hybrid) for an input without a depth map."""
    caption_model: str = "Salesforce/blip2-opt-2.7b"
    """Captioner for an input without a prompt (preprocess_image.py BLIP2)."""
    caption_max_tokens: int = field(default=20, metadata=at_least(1))
    """Longest caption, in tokens (preprocess_image.py `generate(max_new_tokens=20)`)."""
    border_ratio: float = field(default=0.2, metadata=within(0, 1, hi_open=True))
    """Recentring: the object's longer side spans 1 - border_ratio of the square canvas (--border_ratio)."""


@dataclass
class ConceptConfig:
    """Optional concept injection (paper appendix A.2): textual inversion of a new token on Stable Diffusion
    from the reference view, then SD's prompt is "a photo of <token>, <prompt>"; defaults of diffusers'
    examples/textual_inversion/textual_inversion.py."""

    enabled: bool = False
    """Learn and use the concept token (off by default: the paper offers it as an option)."""
    token: str = field(default="<c123-token>", metadata=rule(
        lambda v: bool(v) and len(v.split()) == 1 and v == v.strip(), "must be one word without spaces"))
    """The new token (--placeholder_token)."""
    initializer: str = field(default="object", metadata=rule(lambda v: bool(v.strip()), "must name a word"))
    """Word whose embedding starts the token (--initializer_token; several tokens: their mean)."""
    steps: int = field(default=5000, metadata=at_least(1))
    """Optimisation steps (--max_train_steps)."""
    learning_rate: float = field(default=1e-4, metadata=above(0))
    """AdamW learning rate of the token embedding (--learning_rate, without --scale_lr)."""
    batch_size: int = field(default=16, metadata=at_least(1))
    """Noised copies of the reference per step (--train_batch_size)."""


@dataclass
class ScheduleConfig:
    """Boundary detector and dynamic prior (paper sections 3.2-3.3; nerf/utils.py train_step)."""

    variant: str = field(default="consistent123", metadata=one_of_table("c123.schedules:VARIANTS"))
    """The method or one of its ablations (c123/schedules.py VARIANTS: what each switches on)."""
    weight_shape: str = field(default="exp", metadata=one_of_table("c123.schedules:SHAPES"))
    """Shape of the dynamic prior's weights over the 2D stage (c123/schedules.py SHAPES; --weight_method)."""
    fixed_switch_step: int = field(default=2000, metadata=at_least(0))
    """Switch step of the 'fixed-switch' variant (--fix3D_iters)."""
    check_start: int = field(default=2000, metadata=at_least(0, not_above="check_end"))
    """First NeRF iteration at which the detector scores views (--least_3Donly)."""
    check_end: int = field(default=3500, metadata=at_least(0))
    """NeRF iteration at which the switch is forced when the detector has not decided (--most_3Donly)."""
    check_interval: int = field(default=21, metadata=at_least(1))
    """Score every check_interval iterations (global step % 21 == 0; --render_interval 21, the paper says 20)."""
    num_views: int = field(default=8, metadata=at_least(1))
    """Detector views, evenly spaced in azimuth from 0 at the reference camera's polar angle (the official
    validation loader's circle at --default_polar; elevation 0 by default) (--dataset_size_valid)."""
    render_size: int = field(default=800, metadata=at_least(1))
    """The detector's views are rendered at this size (the validation loader's --H/--W) before being
    resized to prior.clip_size (--h/--w) for CLIP."""
    rate_window: int = field(default=5, metadata=at_least(1))
    """L: number of rates averaged (--last_N)."""
    threshold: float = field(default=0.00025, metadata=at_least(0))
    """delta: switch when R^k falls below it (--threshold)."""
    min_weight: float = field(default=1e-5, metadata=within(0, 1))
    """Floor of the dynamic weights (the 1e-5 of eq. 8; Trainer start_sd_weight/end_zero_weight)."""


@dataclass
class TrainConfig:
    """Iterations, resolutions, optimiser, reference view (main.py, nerf/utils.py)."""

    nerf_iters: int = field(default=5000, metadata=at_least(1))
    """NeRF-stage iterations (--iters of the first run)."""
    dmtet_iters: int = field(default=5000, metadata=at_least(0))
    """DMTet-stage iterations (--dmtet_iters / --iters of the second run)."""
    ref_every: int = field(default=4, metadata=at_least(1))
    """Iterations whose 1-based step is a multiple of this are reference-view steps (--known_view_interval)."""
    nerf_size: int = field(default=128, metadata=at_least(1))
    """NeRF novel-view render size (--h/--w)."""
    ref_scale: float = field(default=1.5, metadata=above(0))
    """Reference view renders at ref_scale x nerf_size in the NeRF stage (--known_view_scale; 1 in DMTet)."""
    ref_background: Literal["noise", "flat"] = "noise"
    """Reference-view background: 'noise' (a random colour per pixel, as the official) or 'flat' (one colour)."""
    ref_jitter: float = field(default=2e-3, metadata=at_least(0))
    """Std of the random offset added to every reference ray's origin and direction (--known_view_noise_scale)."""
    ref_mask_threshold: float | None = field(default=0.5, metadata=within(0, 1, hi_open=True))
    """Reference mask = alpha > threshold (binary, as the official); None: the soft alpha."""
    ref_shading: Literal["lambertian", "albedo"] = "lambertian"
    """Reference render shading: 'lambertian' at ambient 1 (the official: colour = albedo, and normals exist so
    the normal regularisers also act on reference steps) or 'albedo' (no normals on reference steps)."""
    optimizer: Literal["adan", "adam"] = "adan"
    """adan (the code, main.py) or adam (what the paper states)."""
    lr: float = field(default=5e-3, metadata=above(0))
    """Learning rate (main.py: Adan at 5 x --lr 1e-3; use 1e-3 with Adam)."""
    grid_lr_scale: float = field(default=10.0, metadata=above(0))
    """Hash-grid learning-rate multiplier (network_grid.py get_params)."""
    adan_eps: float = field(default=1e-8, metadata=above(0))
    """Adan epsilon (main.py)."""
    weight_decay: float = field(default=2e-5, metadata=at_least(0))
    """Adan weight decay, applied as the official's proximal step (main.py; no_prox=False)."""
    max_grad_norm: float = field(default=5.0, metadata=at_least(0))
    """Adan clips the global gradient norm to this (main.py); 0 disables."""
    ema_decay: float = field(default=0.95, metadata=within(0, 1, hi_open=True))
    """EMA decay of the NeRF parameters; effective decay min(ema_decay, (1 + n) / (10 + n)) (torch_ema)."""
    ema_every: int = field(default=100, metadata=at_least(1))
    """The EMA is updated at the end of each epoch of this many iterations (--dataset_size_train)."""
    lambertian_prob: float = field(default=0.8, metadata=within(0, 1))
    """Novel views: lambertian with this probability, else textureless (train_step: textureless if rand > 0.8)."""
    ambient_range: tuple[float, float] = field(default=(0.1, 1.0), metadata=at_least(0))
    """Ambient ratio range for shaded novel views (0.1 + 0.9 * random())."""
    novel_background: Literal["random", "white"] = "random"
    """Novel-view background: 'random' flat colour (the method) or 'white' (oracle verification)."""
    checkpoint_every: int = field(default=500, metadata=at_least(0))
    """Checkpoint interval within a stage (0 = only at stage ends)."""
    eval_views: int = field(default=8, metadata=at_least(1))
    """Orbit views saved to views/ for evaluation."""
    eval_at_ref_polar: bool = False
    """True: the orbit views circle at the reference camera's polar angle (camera.ref_polar), as SyncDreamer's 16
    views sit at the input's elevation (metric protocol syncdreamer); False: on the equator (polar 90)."""
    eval_size: int = field(default=512, metadata=at_least(1))
    """Size of evaluation renders (views/, reference metrics) and turntable frames."""
    video_frames: int = field(default=60, metadata=at_least(1))
    """Turntable frames."""
    export_mesh: bool = True
    """Export the textured mesh (OBJ+MTL+PNG, GLB)."""
    texture_size: int = field(default=1024, metadata=at_least(1))
    """Baked texture size."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda[:N]'."""
    compile: Literal["auto", "on", "off"] = "auto"
    """torch.compile the hot paths (field, renderer chunks, rasteriser, marching tets): 'auto' (on for CUDA, off
    for CPU, where compiling costs more than a short run saves), 'on' or 'off'; the same arithmetic."""


@dataclass
class LogConfig:
    """What a run records for the researcher besides result.json: TensorBoard events (c123/runlog.py). Logging
    never changes the result, so these fields are left out of the config hash."""

    tensorboard: bool = True
    """Write TensorBoard events to OUT/tb/: loss terms, w3D/w2D, S^k/R^k, switch step, learning rates, gradient
    norms (the official Trainer writes train/loss and train/lr with tensorboardX); `--log none` turns it off."""
    strip_every: int = field(default=100, metadata=at_least(0))
    """Render the validation strip every this many steps and at each stage's end (0: never); the official
    evaluates every epoch (--eval_interval 1 x 100 steps)."""
    strip_views: int = field(default=4, metadata=at_least(1))
    """Orbit views in the validation strip (at the reference camera's polar angle, as the official validation
    loader circles at --default_polar; evenly spaced in azimuth from the reference's)."""
    strip_size: int = field(default=128, metadata=at_least(8))
    """Pixel size of each view of the validation strip."""
    prior_views: bool = True
    """Before training, write OUT/prior_views/az_DDD.png: what the 3D prior imagines at the boundary detector's
    schedule.num_views azimuths (elevation 0, camera vectors relative to the reference camera, as in training),
    drawn by its own sampler (`sample`: Zero-1-to-3's DDIM with classifier-free guidance; the oracle's true views)
    from generators of their own, seeded from the run's seed: the training's random draws stay the same
    (c123/prior_views.py). False: none are drawn."""
    prior_view_steps: int = field(default=50, metadata=at_least(1))
    """DDIM steps of each prior view (Zero-1-to-3's gradio_new.py main_run: 50; the tiny presets: 4)."""
    prior_view_guidance: float = field(default=3.0, metadata=at_least(0))
    """Classifier-free guidance scale of the prior views (gradio_new.py main_run: 3.0; SDS uses
    prior.guidance_scale_3d)."""


@dataclass
class ReconstructConfig:
    """Everything a reconstruction needs besides its inputs."""

    preset: str = "paper"
    """Name of the preset this config started from."""
    seed: int = field(default=0, metadata=within(0, 2**32 - 1))
    """Global seed."""
    camera: CameraConfig = field(default_factory=CameraConfig)
    """Cameras."""
    nerf: NerfConfig = field(default_factory=NerfConfig)
    """NeRF field and renderer."""
    dmtet: DMTetConfig = field(default_factory=DMTetConfig)
    """DMTet stage."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Losses."""
    prior: PriorConfig = field(default_factory=PriorConfig)
    """Priors."""
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    """Models that complete a plain photo (cut-out, depth, caption)."""
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    """Optional concept injection into Stable Diffusion's prompt."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Detector and dynamic prior."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""
    log: LogConfig = field(default_factory=LogConfig)
    """Run logs (not part of the hash)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hash of the resolved config (used as part of the result cache key). Left out, since they do
        not change what a run computes: `log` (what a run records) and prior.model_cache (where weights are
        cached)."""
        values = self.to_dict()
        del values["log"]
        values["prior"].pop("model_cache", None)
        blob = json.dumps(values, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


GPU_GRAD_CHUNK_RAYS = 1024
"""nerf.grad_chunk_rays of the GPU presets: a case of `paper` then needs about 18 GB and fits a 24 GB card
(one graph: about 235 GB with the torch hash grid; docs/METHOD.md section 7); the same gradients up to float
rounding, a third more field work."""


def paper() -> ReconstructConfig:
    """Every default of the authors' code (docs/METHOD.md section 2), rendered in checkpointed chunks of
    GPU_GRAD_CHUNK_RAYS rays for the backward (the memory of a 24 GB card, the same gradients)."""
    cfg = ReconstructConfig(preset="paper")
    cfg.nerf.grad_chunk_rays = GPU_GRAD_CHUNK_RAYS
    return cfg


def fast() -> ReconstructConfig:
    """About a quarter of the paper's compute on one GPU: fewer iterations, smaller DMTet renders (the paper's
    NeRF sizes, so its checkpointed chunks too)."""
    cfg = ReconstructConfig(preset="fast")
    cfg.nerf.grad_chunk_rays = GPU_GRAD_CHUNK_RAYS
    cfg.camera.estimate_elevation = True  # where neither the user nor a table gives the input's elevation
    cfg.train.nerf_iters = 2500
    cfg.train.dmtet_iters = 1500
    cfg.dmtet.tet_resolution = 128
    cfg.dmtet.render_size = 512
    cfg.schedule.check_start, cfg.schedule.check_end = 1000, 1750
    return cfg


def tiny(models_dir: str | None = None) -> ReconstructConfig:
    """CPU in minutes with the tiny random models of `c123 models tiny DIR` (written on first use).

    The models live in `models_dir`, else tiny_models_dir().
    """
    models_dir = models_dir or tiny_models_dir()
    cfg = ReconstructConfig(preset="tiny")
    cfg.nerf = NerfConfig(num_levels=6, log2_hashmap_size=14, finest_resolution=128, hidden_dim=32,
                          num_layers=2, num_samples=24, num_importance=0, occupancy_resolution=32)
    cfg.dmtet = DMTetConfig(tet_resolution=32, render_size=64, mean_density_resolution=32)
    cfg.prior.zero123_model = f"{models_dir}/zero123"
    cfg.prior.sd_model = f"{models_dir}/stable-diffusion"
    cfg.prior.clip_model = f"{models_dir}/clip"
    cfg.preprocess.background_model = f"{models_dir}/clipseg"
    cfg.preprocess.depth_model = f"{models_dir}/dpt"
    cfg.preprocess.caption_model = f"{models_dir}/blip2"
    cfg.concept.steps, cfg.concept.batch_size = 10, 2
    cfg.prior.zero123_size = 32
    cfg.prior.sd_size = 32
    cfg.prior.clip_size = 16
    cfg.train = TrainConfig(nerf_iters=60, dmtet_iters=20, nerf_size=32, ref_scale=1.5,
                            checkpoint_every=20, ema_every=10, eval_views=8, eval_size=64, video_frames=8,
                            texture_size=128)
    # scores at 21, 24, ..., 48; decisions from step 36 (after 5 rates), on novel-view steps only
    cfg.schedule.check_start, cfg.schedule.check_end, cfg.schedule.check_interval = 20, 50, 3
    cfg.schedule.render_size = 32
    cfg.schedule.fixed_switch_step = 20
    cfg.log.strip_every, cfg.log.strip_size = 20, 32
    cfg.log.prior_view_steps = 4  # the tiny priors' views are noise at any step count: only the plumbing
    return cfg


def verify(models_dir: str | None = None) -> ReconstructConfig:
    """The synthetic scenes on CPU in a few minutes each, with the oracle as the 3D prior (3d-only).

    Every stage runs (NeRF under the oracle, DMTet, export); the sizes are the tiny preset's field at a 64 px
    training view, 400 + 150 steps. Deviations from `paper`, each for the oracle or the CPU budget
    (docs/METHOD.md section 6): novel views in albedo on white (what the oracle renders), Adam at 1e-2
    (Adan at the paper's 5e-3 converges too slowly for 400 steps), no normal-based regularisers (three more
    field evaluations per sample), reference view at the training size. The CLIP of the metrics is the tiny
    random one, as in `tiny` (no download).
    """
    cfg = tiny(models_dir)
    cfg.preset = "verify"
    cfg.nerf = NerfConfig(num_levels=6, log2_hashmap_size=14, finest_resolution=128, hidden_dim=32, num_layers=2,
                          num_samples=24, num_importance=0, bound=0.75, occupancy_resolution=32)
    cfg.dmtet = DMTetConfig(tet_resolution=64, render_size=128, mean_density_resolution=32)
    cfg.loss.orientation = cfg.loss.normal_smooth_3d = cfg.loss.normal_smooth_2d = 0.0
    cfg.prior.oracle_scene = ORACLE_FROM_CASE
    cfg.camera.estimate_elevation = True  # synthetic-elevated: the oracle's views give the estimate's answer
    cfg.schedule.variant = "3d-only"
    cfg.train = TrainConfig(nerf_iters=400, dmtet_iters=150, nerf_size=64, ref_scale=1.0, optimizer="adam", lr=1e-2,
                            grid_lr_scale=1.0, lambertian_prob=1.0, ambient_range=(1.0, 1.0),
                            novel_background="white", checkpoint_every=100, eval_views=8, eval_size=128,
                            video_frames=36, texture_size=256)
    return cfg


PRESETS = {"paper": paper, "fast": fast, "tiny": tiny, "verify": verify}
TINY_MODEL_PRESETS = ("tiny", "verify")
"""Presets whose models are the tiny random ones of `c123 models tiny DIR`, written on first use."""


def preset(name: str) -> ReconstructConfig:
    """The named preset; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise C123Error(f"unknown preset '{name}': use one of {', '.join(PRESETS)}")
    return PRESETS[name]()


def apply_overrides(cfg: ReconstructConfig, overrides: list[str] | dict[str, Any]) -> ReconstructConfig:
    """Apply `section.field=value` overrides (values parsed as JSON when they parse, else strings)."""
    items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
    for key, value in items:
        target, parts = cfg, key.split(".")
        for part in parts[:-1]:
            target = _get(target, part, key)
        current = _get(target, parts[-1], key)
        setattr(target, parts[-1], _coerce(value, current, key))
    return cfg


def from_dict(data: dict[str, Any]) -> ReconstructConfig:
    """Rebuild a config from `to_dict()` output (e.g. a result.json)."""
    return _build(ReconstructConfig, data)


def _build(cls, data):
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = getattr(cls(), f.name) if not is_dataclass(f.type) else None
        sub = getattr(cls(), f.name)
        if is_dataclass(sub):
            kwargs[f.name] = _build(type(sub), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            kwargs[f.name] = tuple(value)
        else:
            kwargs[f.name] = value
    return cls(**kwargs)


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise C123Error(f"override '{item}' is not key=value: write e.g. train.nerf_iters=100")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


def _get(obj, name, key):
    if not is_dataclass(obj) or name not in {f.name for f in fields(obj)}:
        known = _field_paths(ReconstructConfig())
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise C123Error(f"unknown config key '{key}': {hint}`c123 config show paper` lists every field")
    return getattr(obj, name)


def _field_paths(obj, prefix: str = "") -> list[str]:
    """Dotted names of every leaf field ('train.nerf_iters', ...)."""
    paths = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        paths += _field_paths(value, f"{prefix}{f.name}.") if is_dataclass(value) else [prefix + f.name]
    return paths


def _coerce(value, current, key):
    if value is None:
        return None  # null: c123.config_checks refuses it where the field's type has no None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if current is not None and not isinstance(value, type(current)) and not (
            isinstance(current, float) and isinstance(value, float)):
        if isinstance(current, str) or current is None:
            return str(value)
        raise C123Error(f"override '{key}' expects {type(current).__name__}, got {shown(value)}")
    return value
