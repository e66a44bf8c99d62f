"""Checks of a resolved ReconstructConfig, so a value that cannot work is refused before any compute.

Two layers:
- types, read from the dataclass annotations of c123/config.py, for every field (new fields included):
  `true` is not an integer, `3` is not a flag, numbers are finite, `tuple[float, float]` is a pair of
  numbers, `str | None` is text or null;
- ranges and choices per field (RULES), plus the few rules between two fields (ORDERED) and the device.

Each failure is one ConfigError line naming the field, the value, the rule and a working value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

from c123.config import ReconstructConfig
from c123.errors import C123Error


class ConfigError(C123Error):
    """A config value has the wrong type or is out of its range."""


@dataclass(frozen=True)
class Rule:
    """A predicate on one field's value and the sentence it prints when the value fails it."""

    ok: Callable[[Any], bool]
    text: str


def at_least(lo: float) -> Rule:
    return Rule(lambda v: v >= lo, f"must be >= {lo}")


def above(lo: float) -> Rule:
    return Rule(lambda v: v > lo, f"must be > {lo}")


def between(lo: float, hi: float) -> Rule:
    return Rule(lambda v: lo <= v <= hi, f"must be in [{lo}, {hi}]")


def below_one() -> Rule:
    return Rule(lambda v: 0 <= v < 1, "must be in [0, 1)")


def one_of(*names: str) -> Rule:
    return Rule(lambda v: v in names, f"must be one of {', '.join(names)}")


def pair(lo: float | None = None, hi: float | None = None, strict_lo: bool = False) -> Rule:
    """A (low, high) range: low <= high, inside [lo, hi] (low > lo with strict_lo)."""
    def ok(v) -> bool:
        a, b = v
        return a <= b and (lo is None or (a > lo if strict_lo else a >= lo)) and (hi is None or b <= hi)
    bounds = f" within {'(' if strict_lo else '['}{lo}, {hi}]" if lo is not None or hi is not None else ""
    return Rule(ok, f"must be [low, high] with low <= high{bounds}")


def _variants() -> Rule:
    from c123.schedules import VARIANTS
    return one_of(*VARIANTS)


def _shapes() -> Rule:
    from c123.schedules import SHAPES
    return one_of(*SHAPES)


def _oracle_scenes() -> Rule:
    from c123.config import ORACLE_FROM_CASE
    from c123.synthetic import SCENES
    return Rule(lambda v: v is None or v in (*SCENES, ORACLE_FROM_CASE),
                f"must be null, '{ORACLE_FROM_CASE}' or a synthetic scene ({', '.join(SCENES)})")


RULES: dict[str, Rule | Callable[[], Rule]] = {
    "seed": between(0, 2**32 - 1),
    "camera.ref_radius": above(0),
    "camera.fovy": Rule(lambda v: 0 < v < 180, "must be in (0, 180) degrees"),
    "camera.radius_range": pair(0, None, strict_lo=True),
    "camera.polar_range": pair(0, 180),
    "camera.azimuth_range": pair(-360, 360),
    "camera.progressive_start": between(0, 1),
    "camera.progressive_rate": at_least(0),
    "nerf.num_levels": at_least(1),
    "nerf.level_dim": at_least(1),
    "nerf.log2_hashmap_size": between(1, 32),
    "nerf.base_resolution": at_least(1),
    "nerf.hidden_dim": at_least(1),
    "nerf.num_layers": at_least(1),
    "nerf.bound": above(0),
    "nerf.blob_density": at_least(0),
    "nerf.blob_radius": above(0),
    "nerf.num_samples": at_least(1),
    "nerf.num_importance": at_least(0),
    "nerf.backend": one_of("auto", "torch", "triton", "tcnn"),
    "nerf.occupancy_resolution": at_least(2),
    "nerf.occupancy_threshold": at_least(0),
    "nerf.occupancy_every": at_least(1),
    "nerf.occupancy_mode": one_of("auto", "compact", "mask"),
    "nerf.grad_chunk_rays": at_least(0),
    "dmtet.tet_resolution": at_least(2),
    "dmtet.render_size": at_least(1),
    "dmtet.deform_scale": at_least(0),
    "dmtet.backend": one_of("auto", "torch", "nvdiffrast"),
    "loss.rgb": at_least(0),
    "loss.mask": at_least(0),
    "loss.depth": at_least(0),
    "loss.entropy": at_least(0),
    "loss.orientation": at_least(0),
    "loss.normal_smooth_3d": at_least(0),
    "loss.normal_smooth_2d": at_least(0),
    "loss.mesh_normal_consistency": at_least(0),
    "loss.mesh_laplacian": at_least(0),
    "prior.guidance_scale_3d": at_least(0),
    "prior.guidance_scale_2d": at_least(0),
    "prior.t_range_nerf": pair(0, 1),
    "prior.t_range_dmtet": pair(0, 1),
    "prior.zero123_size": at_least(8),
    "prior.sd_size": at_least(8),
    "prior.clip_size": at_least(1),
    "prior.precision": one_of("fp16", "fp32"),
    "prior.zero123_timestep": one_of("max", "uniform"),
    "prior.sd_view_prompt": one_of("interpolate", "bucket"),
    "prior.render_latents": one_of("sample", "mean"),
    "prior.zero123_variant": one_of("fp16_ema", "default"),
    "preprocess.mask_threshold": Rule(lambda v: 0 < v < 1, "must be in (0, 1)"),
    "preprocess.caption_max_tokens": at_least(1),
    "preprocess.border_ratio": below_one(),
    "concept.token": Rule(lambda v: bool(v) and len(v.split()) == 1 and v == v.strip(),
                          "must be one word without spaces"),
    "concept.initializer": Rule(lambda v: bool(v.strip()), "must name a word"),
    "concept.steps": at_least(1),
    "concept.learning_rate": above(0),
    "concept.batch_size": at_least(1),
    "prior.oracle_scene": _oracle_scenes,
    "schedule.variant": _variants,
    "schedule.weight_shape": _shapes,
    "schedule.fixed_switch_step": at_least(0),
    "schedule.check_start": at_least(0),
    "schedule.check_end": at_least(0),
    "schedule.check_interval": at_least(1),
    "schedule.num_views": at_least(1),
    "schedule.render_size": at_least(1),
    "schedule.rate_window": at_least(1),
    "schedule.threshold": at_least(0),
    "schedule.min_weight": between(0, 1),
    "train.nerf_iters": at_least(1),
    "train.dmtet_iters": at_least(0),
    "train.ref_every": at_least(1),
    "train.nerf_size": at_least(1),
    "train.ref_scale": above(0),
    "train.optimizer": one_of("adan", "adam"),
    "train.lr": above(0),
    "train.grid_lr_scale": above(0),
    "train.ema_decay": below_one(),
    "train.ema_every": at_least(1),
    "train.adan_eps": above(0),
    "train.weight_decay": at_least(0),
    "train.max_grad_norm": at_least(0),
    "train.ref_background": one_of("noise", "flat"),
    "train.ref_jitter": at_least(0),
    "train.ref_mask_threshold": Rule(lambda v: v is None or 0 <= v < 1, "must be null or in [0, 1)"),
    "train.ref_shading": one_of("lambertian", "albedo"),
    "loss.entropy_ramp": at_least(0),
    "train.lambertian_prob": between(0, 1),
    "train.ambient_range": pair(0, None),
    "train.novel_background": one_of("random", "white"),
    "train.checkpoint_every": at_least(0),
    "train.eval_views": at_least(1),
    "train.eval_size": at_least(1),
    "train.video_frames": at_least(1),
    "train.texture_size": at_least(1),
    "train.compile": one_of("auto", "on", "off"),
    "log.strip_every": at_least(0),
    "log.strip_views": at_least(1),
    "log.strip_size": at_least(8),
}
"""Range or choice of each field that has one (a callable builds its Rule when first needed)."""

ORDERED: list[tuple[str, str]] = [("nerf.base_resolution", "nerf.finest_resolution"),
                                  ("schedule.check_start", "schedule.check_end")]
"""(a, b): field a must not exceed field b."""


def validate(cfg: ReconstructConfig, *, check_device: bool = True) -> ReconstructConfig:
    """Raise ConfigError for the first field whose type, range or device is wrong; return `cfg` otherwise.

    check_device: whether `train.device` must exist on this machine (False where another machine runs the
    reconstruction, e.g. a cluster's GPU node; its caller checks the device there)."""
    check_types(cfg)
    for path, rule in RULES.items():
        rule = rule() if not isinstance(rule, Rule) else rule
        value = lookup(cfg, path)
        if not rule.ok(value):
            raise _error(path, value, rule.text)
    for a, b in ORDERED:
        if lookup(cfg, a) > lookup(cfg, b):
            raise _error(a, lookup(cfg, a), f"must not exceed {b}={lookup(cfg, b)!r}")
    if check_device:
        check_device_exists(cfg.train.device, _cuda_count())
    return cfg


def check_device_exists(device: str, cuda_devices: int) -> None:
    """'auto' and 'cpu' always work; 'cuda' / 'cuda:N' need that many CUDA devices."""
    m = re.fullmatch(r"cuda(?::(\d+))?", device)
    if device in ("auto", "cpu"):
        return
    if m is None:
        raise _error("train.device", device, "is not a device name (auto, cpu, cuda or cuda:N)")
    index = int(m.group(1) or 0)
    if index >= cuda_devices:
        have = "no CUDA GPU" if cuda_devices == 0 else f"{cuda_devices} CUDA device(s)"
        raise ConfigError(f"config train.device={device!r} but this machine has {have}: use "
                          "--set train.device=auto (or cpu)")


def lookup(cfg, path: str):
    """cfg.a.b for 'a.b'."""
    return functools.reduce(getattr, path.split("."), cfg)


# ---- types from annotations ------------------------------------------------------------------------
def check_types(obj) -> None:
    """Every field of a (nested) dataclass against its annotation; ConfigError for the first that differs."""
    for path, value, hint in _leaves(obj, type(obj)):
        if not _matches(value, hint):
            raise _error(path, value, f"must be {_describe(hint)}")


def _leaves(obj, cls, prefix: str = ""):
    """(path, value, type hint) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, hint, path = getattr(obj, f.name), hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise _error(path, value, f"must be a {hint.__name__} section")
            yield from _leaves(value, hint, path + ".")
        else:
            yield path, value, hint


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value) if args else isinstance(value, list)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # an annotation this checker does not know: its own code checks it


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None) or hint is None:
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)}: [" + ", ".join(_describe(a) for a in args) + "]"
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "text"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _error(path: str, value, problem: str) -> ConfigError:
    example = _default(path)
    fix = f"e.g. --set {path}={_json(example)}" if example is not _MISSING else "see c123/config.py"
    return ConfigError(f"config {path}={_json(value)} {problem}: {fix}")


_MISSING = object()


def _default(path: str):
    try:
        return lookup(ReconstructConfig(), path)
    except AttributeError:
        return _MISSING


def _json(value) -> str:
    import json

    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
