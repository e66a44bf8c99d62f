"""Typed configuration of a reconstruction, with the named presets `paper`, `fast` and `tiny`.

`paper` holds every published default of METHOD.md section 2 (following the authors' code where it
differs from the paper). `fast` trades iterations and resolution for speed on one GPU. `tiny` runs the
whole method on CPU with the tiny random-weight models that `c123 models tiny DIR` writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from c123.errors import C123Error


@dataclass
class CameraConfig:
    """Reference and novel-view camera distributions (degrees, world units)."""

    ref_polar: float = 90.0
    """Polar angle of the reference camera from +y (90 = elevation 0)."""
    ref_azimuth: float = 0.0
    """Azimuth of the reference camera (0 = looking at the object's front, from +z)."""
    ref_radius: float = 3.2
    """Distance of the reference camera from the origin."""
    fovy: float = 20.0
    """Vertical field of view of every camera."""
    radius_range: tuple[float, float] = (3.0, 3.5)
    """Novel-view radius range."""
    polar_range: tuple[float, float] = (45.0, 105.0)
    """Novel-view polar range (full extent, reached after progressive widening)."""
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    """Novel-view azimuth range (full extent)."""
    progressive_start: float = 0.2
    """Fraction of the polar/azimuth ranges used at step 0 ("progressive view")."""
    progressive_until: float = 0.5
    """Fraction of the NeRF stage after which the full ranges are used."""


@dataclass
class NerfConfig:
    """Instant-NGP style field as the official nerf/network_grid.py: hash grid + MLP, exp density with a blob."""

    num_levels: int = 16
    """Hash-grid levels (gridencoder num_levels)."""
    level_dim: int = 2
    """Features per level."""
    log2_hashmap_size: int = 19
    """log2 of the hash table size per level."""
    base_resolution: int = 16
    """Coarsest grid resolution."""
    finest_resolution: int = 2048
    """Finest grid resolution per unit of bound (the official desired_resolution is 2048 * bound)."""
    interpolation: str = "smoothstep"
    """Corner weights of the hash grid: 'smoothstep' (network_grid.py) or 'linear' (Instant-NGP)."""
    progressive_level: bool = True
    """Coarse-to-fine hash levels: the loop activates min(1, 0.25 + 2 * stage progress) of them, in each stage."""
    hidden_dim: int = 64
    """Width of the density/albedo MLP (sigma_net)."""
    num_layers: int = 3
    """Depth of the density/albedo MLP (sigma_net)."""
    bound: float = 1.0
    """The field lives in [-bound, bound]^3."""
    blob_density: float = 10.0
    """Peak of the Gaussian density prior at the origin (main.py --blob_density)."""
    blob_radius: float = 0.2
    """Radius (std) of the Gaussian density prior (main.py --blob_radius)."""
    normal_eps: float = 1e-2
    """Step of the central differences that give normals (network_grid.py finite_difference_normal)."""
    num_samples: int = 64
    """Stratified samples per ray."""
    num_importance: int = 32
    """Extra importance samples per ray (0 disables the second pass)."""
    backend: str = "auto"
    """Hash-grid backend: 'auto' (tinycudann if importable and on CUDA), 'torch' or 'tcnn'."""
    occupancy_grid: bool = False
    """Skip empty space with a coarse occupancy grid (worth it on GPU)."""


@dataclass
class DMTetConfig:
    """Refinement stage as the official renderer.py (init_tet, run_dmtet): tet SDF + deformation, rasterised."""

    tet_resolution: int = 256
    """Tet grid size (official tet_grid_size): A15 lattice with grid step 2 / size over [-1,1]^3, multiple of 4."""
    render_size: int = 1024
    """Rasterised novel-view size."""
    init_density_threshold: float = 10.0
    """Cap of the init threshold: threshold = min(mean NeRF density, cap); sdf = clamp(density - threshold, -1, 1)."""
    mean_density_resolution: int = 128
    """Grid on which the mean NeRF density is probed (the official cuda_ray density grid is 128^3)."""
    scale_margin: float = 0.1
    """The grid is rescaled to the bounding box of the occupied vertices plus this margin per axis (init_tet)."""
    deform_scale: float = 1.0
    """Vertex offsets are deform_scale * tanh(deform) / tet_resolution (run_dmtet: tanh(deform) / tet_grid_size)."""
    backend: str = "auto"
    """Rasteriser backend: 'auto' (nvdiffrast if importable and on CUDA), 'torch' or 'nvdiffrast'."""


@dataclass
class LossConfig:
    """Reference-view losses and regularisers (METHOD.md section 2)."""

    rgb: float = 1000.0
    """Weight of the reference-view rgb MSE."""
    mask: float = 500.0
    """Weight of the reference-view mask MSE."""
    depth: float = 10.0
    """Weight of 1 - Pearson(depth) on the mask, ramped by min(1, step/iters); off in DMTet."""
    entropy: float = 1.0
    """Opacity entropy regulariser (NeRF)."""
    orientation: float = 1.0
    """Normal orientation regulariser (NeRF)."""
    normal_smooth_3d: float = 20.0
    """3D normal smoothness (NeRF)."""
    normal_smooth_2d: float = 10.0
    """2D normal-map smoothness (NeRF)."""
    mesh_normal_consistency: float = 100.0
    """Mesh normal consistency (DMTet)."""
    mesh_laplacian: float = 100.0
    """Mesh Laplacian smoothness (DMTet)."""


@dataclass
class PriorConfig:
    """Where the diffusion/CLIP models come from and how SDS uses them."""

    zero123_model: str = "bennyguo/zero123-xl-diffusers"
    """Zero-1-to-3 in diffusers format: Hub id or local directory."""
    sd_model: str = "stabilityai/stable-diffusion-2-1-base"
    """Stable Diffusion 2.1 base: Hub id or local directory."""
    clip_model: str = "openai/clip-vit-base-patch16"
    """CLIP for the boundary detector: Hub id or local directory."""
    depth_model: str | None = None
    """DPT depth model for inputs without a depth map (None: depth loss off when no map is given)."""
    guidance_scale_3d: float = 10.0
    """Classifier-free guidance scale of Zero-1-to-3."""
    guidance_scale_2d: float = 10.0
    """Classifier-free guidance scale of Stable Diffusion."""
    t_range_nerf: tuple[float, float] = (0.2, 0.6)
    """SDS timestep range (fraction of the schedule) in the NeRF stage."""
    t_range_dmtet: tuple[float, float] = (0.2, 0.5)
    """SDS timestep range in the DMTet stage."""
    zero123_size: int = 256
    """Zero-1-to-3 input resolution."""
    sd_size: int = 512
    """Stable Diffusion input resolution."""
    clip_size: int = 128
    """Renders are resized to this before the detector's CLIP (the encoder then resizes to its own)."""
    angle_scaled_gradient: bool = True
    """Scale the Zero-1-to-3 gradient by (angle to the reference)/180."""
    dtype: str = "float32"
    """Weights dtype on CUDA ('float32' or 'float16'); CPU always runs float32."""
    oracle_scene: str | None = None
    """Verification only: replace Zero-1-to-3 with an oracle rendering this synthetic scene."""


@dataclass
class ScheduleConfig:
    """Boundary detector and dynamic prior (METHOD.md sections 4-5)."""

    variant: str = "consistent123"
    """consistent123 | 3d-only | dynamic-only | fixed-switch | 3d-then-2d."""
    weight_shape: str = "exp"
    """Dynamic prior shape: exp | linear | log."""
    fixed_switch_step: int = 2000
    """Switch step for the 'fixed-switch' and '3d-then-2d' variants."""
    check_start: int = 2000
    """First NeRF iteration at which the detector may check."""
    check_end: int = 3500
    """NeRF iteration at which the switch is forced."""
    check_interval: int = 21
    """Iterations between checks (21 in the code, 20 in the paper)."""
    num_views: int = 8
    """Detector views at elevation 0, evenly spaced in azimuth."""
    rate_window: int = 5
    """L: number of rates averaged."""
    threshold: float = 0.00025
    """delta: switch when R^k falls below it."""
    min_weight: float = 1e-5
    """Floor of the dynamic weights (the 1e-5 of eq. 8)."""


@dataclass
class TrainConfig:
    """Iterations, resolutions, optimiser."""

    nerf_iters: int = 5000
    """NeRF-stage iterations."""
    dmtet_iters: int = 5000
    """DMTet-stage iterations."""
    ref_every: int = 4
    """Every ref_every-th iteration is a reference-view step."""
    nerf_size: int = 128
    """NeRF novel-view render size."""
    ref_scale: float = 1.5
    """Reference view renders at ref_scale x nerf_size."""
    optimizer: str = "adan"
    """adan (the code) or adam (what the paper states)."""
    lr: float = 5e-3
    """Learning rate (Adan default; use 1e-3 with Adam)."""
    grid_lr_scale: float = 10.0
    """Hash-grid learning-rate multiplier."""
    ema_decay: float = 0.95
    """EMA of the parameters used for evaluation renders."""
    lambertian_prob: float = 0.8
    """Novel views: lambertian with this probability, else textureless."""
    ambient_range: tuple[float, float] = (0.1, 1.0)
    """Ambient ratio range for shaded novel views."""
    novel_background: str = "random"
    """Novel-view background: 'random' flat colour (the method) or 'white' (oracle verification)."""
    checkpoint_every: int = 500
    """Checkpoint interval within a stage (0 = only at stage ends)."""
    eval_views: int = 8
    """Orbit views saved to views/ for evaluation."""
    eval_size: int = 512
    """Size of evaluation renders (views/, reference metrics) and turntable frames."""
    video_frames: int = 60
    """Turntable frames."""
    export_mesh: bool = True
    """Export the textured mesh (OBJ+MTL+PNG, GLB)."""
    texture_size: int = 1024
    """Baked texture size."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu' or 'cuda[:N]'."""


@dataclass
class ReconstructConfig:
    """Everything a reconstruction needs besides its inputs."""

    preset: str = "paper"
    """Name of the preset this config started from."""
    seed: int = 0
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
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Detector and dynamic prior."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Training."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """Stable hash of the resolved config (used as part of the result cache key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def paper() -> ReconstructConfig:
    """Every published default (METHOD.md section 2)."""
    return ReconstructConfig(preset="paper")


def fast() -> ReconstructConfig:
    """About a quarter of the paper's compute on one GPU: fewer iterations, smaller DMTet renders."""
    cfg = ReconstructConfig(preset="fast")
    cfg.train.nerf_iters = 2500
    cfg.train.dmtet_iters = 1500
    cfg.dmtet.tet_resolution = 128
    cfg.dmtet.render_size = 512
    cfg.schedule.check_start, cfg.schedule.check_end = 1000, 1750
    return cfg


def tiny(models_dir: str | None = None) -> ReconstructConfig:
    """CPU in minutes with the tiny random models of `c123 models tiny DIR` (written on first use).

    The models live in `models_dir`, else $C123_TINY_MODELS, else ~/.cache/c123/tiny-models.
    """
    models_dir = models_dir or os.environ.get("C123_TINY_MODELS", "~/.cache/c123/tiny-models")
    cfg = ReconstructConfig(preset="tiny")
    cfg.nerf = NerfConfig(num_levels=6, log2_hashmap_size=14, finest_resolution=128, hidden_dim=32,
                          num_layers=2, num_samples=24, num_importance=0)
    cfg.dmtet = DMTetConfig(tet_resolution=32, render_size=64, mean_density_resolution=32)
    cfg.prior.zero123_model = f"{models_dir}/zero123"
    cfg.prior.sd_model = f"{models_dir}/stable-diffusion"
    cfg.prior.clip_model = f"{models_dir}/clip"
    cfg.prior.zero123_size = 32
    cfg.prior.sd_size = 32
    cfg.prior.clip_size = 16
    cfg.train = TrainConfig(nerf_iters=60, dmtet_iters=20, nerf_size=32, ref_scale=1.5,
                            checkpoint_every=20, eval_views=8, eval_size=64, video_frames=8,
                            texture_size=128)
    cfg.schedule.check_start, cfg.schedule.check_end, cfg.schedule.check_interval = 20, 50, 5
    cfg.schedule.fixed_switch_step = 20
    return cfg


PRESETS = {"paper": paper, "fast": fast, "tiny": tiny}


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
    if not hasattr(obj, name):
        raise C123Error(f"unknown config key '{key}': see c123/config.py for the fields")
    return getattr(obj, name)


def _coerce(value, current, key):
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
        raise C123Error(f"override '{key}' expects {type(current).__name__}, got {value!r}")
    return value
