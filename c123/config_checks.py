"""Checks of a resolved ReconstructConfig, so a value that cannot work is refused before any compute.

Two layers:
- types, read from the dataclass annotations of c123/config.py, for every field (new fields included):
  `true` is not an integer, `3` is not a flag, numbers are finite, `tuple[float, float]` is a pair of
  numbers, `str | None` is text or null;
- what each field allows besides its type, declared once at the field in c123/config.py: the values of a
  `Literal` type, the range (Bounds), computed choices (TableChoices) or other Rule in its
  `field(metadata=...)`, and `not_above` (a sibling it must not exceed); then the device.

Each failure is one ConfigError line naming the field, the value, the rule and a working value.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import re
import types
import typing
from typing import Any

from c123.config import Bounds, ReconstructConfig, Rule, TableChoices
from c123.errors import C123Error, shown


class ConfigError(C123Error):
    """A config value has the wrong type or is out of its range."""


def validate(cfg: ReconstructConfig, *, check_device: bool = True) -> ReconstructConfig:
    """Raise ConfigError for the first field whose type, range or device is wrong; return `cfg` otherwise.

    check_device: whether `train.device` must exist on this machine (False where another machine runs the
    reconstruction, e.g. a cluster's GPU node; its caller checks the device there)."""
    check_types(cfg)
    check_allowed(cfg)
    if check_device:
        check_device_exists(cfg.train.device, _cuda_count())
    return cfg


def check_section(section, name: str) -> None:
    """One section (e.g. the PriorConfig a prior is built from) checked as `validate` checks it inside a whole
    config; errors name the field `name.field`."""
    check_types(section, name + ".")
    check_allowed(section, name + ".")


def check_allowed(obj, prefix: str = "") -> None:
    """Every field of a (nested) dataclass of the right types against what its declaration allows: the values
    of its Literal type, the Bounds, TableChoices or Rule of its metadata, then its metadata's `not_above`."""
    leaves = list(_leaves(obj, type(obj), prefix))
    for path, value, hint, f in leaves:
        text = allowed_text(f, hint)
        if text is not None and not (value is None and _allows_none(hint)) and not _allows(f, hint, value):
            raise _error(path, value, text)
    for path, value, _, f in leaves:
        if "not_above" in f.metadata:
            other = f"{path.rpartition('.')[0]}.{f.metadata['not_above']}".lstrip(".")  # the sibling field
            limit = lookup(obj, other.removeprefix(prefix))
            if value > limit:
                raise _error(path, value, f"must not exceed {other}={limit!r}")


def allowed_texts(cfg: ReconstructConfig | None = None) -> dict[str, str]:
    """{'train.nerf_iters': 'must be >= 1', ...}: what each field allows besides its type, for `--help` and
    `c123 config show` (the fields that allow any value of their type are left out)."""
    cfg = cfg or ReconstructConfig()
    return {path: text for path, _, hint, f in _leaves(cfg, type(cfg)) if (text := allowed_text(f, hint))}


def allowed_text(f: dataclasses.Field, hint) -> str | None:
    """'must be >= 1', 'must be one of adan, adam', ...: what field `f` allows besides its type (None: no more)."""
    allowed = f.metadata.get("allowed")
    maybe_null = "null or " if _allows_none(hint) and not isinstance(allowed, (TableChoices, Rule)) else ""
    if typing.get_origin(_without_none(hint)) is typing.Literal:
        return f"must be {maybe_null}one of {', '.join(map(str, typing.get_args(_without_none(hint))))}"
    if isinstance(allowed, Rule):
        return allowed.text
    if isinstance(allowed, TableChoices):
        table = _table(allowed.table)
        if not allowed.wording:
            return f"must be one of {', '.join((*allowed.also, *table))}"
        return "must be " + allowed.wording.format(table=", ".join(table), also=", ".join(allowed.also))
    if isinstance(allowed, Bounds):
        if typing.get_origin(_without_none(hint)) is tuple:
            b = allowed
            within = (f" within {'(' if b.lo_open else '['}{b.lo}, {b.hi}{')' if b.hi_open else ']'}"
                      if b.lo is not None or b.hi is not None else "")
            return f"must be [low, high] with low <= high{within}"
        return f"must be {maybe_null}{_range_text(allowed)}"
    return None


def _allows(f: dataclasses.Field, hint, value) -> bool:
    allowed = f.metadata.get("allowed")
    if typing.get_origin(_without_none(hint)) is typing.Literal:
        return value in typing.get_args(_without_none(hint))
    if isinstance(allowed, Rule):
        return allowed.ok(value)
    if isinstance(allowed, TableChoices):
        return value in (*allowed.also, *_table(allowed.table))
    if typing.get_origin(_without_none(hint)) is tuple:
        low, high = value
        return low <= high and _in_bounds(low, allowed) and _in_bounds(high, allowed)
    return _in_bounds(value, allowed)


def _in_bounds(v, b: Bounds) -> bool:
    return ((b.lo is None or (v > b.lo if b.lo_open else v >= b.lo))
            and (b.hi is None or (v < b.hi if b.hi_open else v <= b.hi)))


def _range_text(b: Bounds) -> str:
    """'>= 1', '> 0', 'in [0, 1)', 'in (0, 180) degrees'."""
    if b.hi is None:
        return f"{'>' if b.lo_open else '>='} {b.lo}"
    if b.lo is None:
        return f"{'<' if b.hi_open else '<='} {b.hi}"
    unit = f" {b.unit}" if b.unit else ""
    return f"in {'(' if b.lo_open else '['}{b.lo}, {b.hi}{')' if b.hi_open else ']'}{unit}"


@functools.lru_cache(maxsize=None)
def _table(ref: str) -> tuple[str, ...]:
    """The names of 'module:NAME' (a dict's keys or a sequence's items)."""
    module, name = ref.split(":")
    return tuple(getattr(importlib.import_module(module), name))


def _allows_none(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _without_none(hint):
    """`X` of `X | None` (the hint itself otherwise)."""
    if _allows_none(hint):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        return rest[0] if len(rest) == 1 else hint
    return hint


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
def check_types(obj, prefix: str = "") -> None:
    """Every field of a (nested) dataclass against its annotation; ConfigError for the first that differs."""
    for path, value, hint, _ in _leaves(obj, type(obj), prefix):
        if not _matches(value, hint):
            raise _error(path, value, f"must be {_describe(hint)}")


def _leaves(obj, cls, prefix: str = ""):
    """(path, value, type hint, dataclasses.Field) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value, hint, path = getattr(obj, f.name), hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise _error(path, value, f"must be a {hint.__name__} section")
            yield from _leaves(value, hint, path + ".")
        else:
            yield path, value, hint, f


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if origin is typing.Literal:  # the type of its values here; the values themselves in check_allowed
        return any(_matches(value, type(a)) for a in args)
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
        return " or ".join(dict.fromkeys(_describe(type(a)) for a in args))
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
    return shown(value)  # bounded: a huge or alias-bomb value is summarised, never expanded into the message


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
