"""Configs as files: the resolved config as commented YAML (`c123 config show`, OUT/config.yaml), YAML files
of any subset of fields read back (`--config FILE`), and the one order in which a command resolves its config.

The comments are the fields' docstrings in c123/config.py, read from its source, so the file, `--help` and the
code say the same thing.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
from pathlib import Path
from typing import Any

import yaml

from c123 import config as config_module
from c123.config import PRESETS, ReconstructConfig, apply_overrides, preset
from c123.errors import C123Error, count_values


class ConfigFileError(C123Error):
    """A config file cannot be read or does not hold a mapping of config fields."""


# ---- field docstrings --------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def class_docs() -> dict[str, dict[str, str]]:
    """{dataclass name: {field name: its docstring on one line}}, from c123/config.py's source."""
    tree = ast.parse(inspect.getsource(config_module))
    docs: dict[str, dict[str, str]] = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        fields: dict[str, str] = {}
        body = cls.body
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                fields[node.target.id] = " ".join(after.value.value.split())
        docs[cls.name] = fields
    return docs


def field_docs(cfg: ReconstructConfig | None = None) -> dict[str, str]:
    """{'train.nerf_iters': 'NeRF-stage iterations (--iters of the first run). [must be >= 1]', ...} for every
    leaf field: its docstring, then what it allows besides its type (c123.config_checks.allowed_texts)."""
    from c123.config_checks import allowed_texts

    allowed = allowed_texts()
    out: dict[str, str] = {}

    def walk(obj, prefix: str) -> None:
        docs = class_docs().get(type(obj).__name__, {})
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                path = prefix + f.name
                out[path] = " ".join(filter(None, [docs.get(f.name, ""), allowed.get(path) and f"[{allowed[path]}]"]))

    walk(cfg or ReconstructConfig(), "")
    return out


def fields_help(cfg: ReconstructConfig | None = None) -> str:
    """Every field with its default and docstring, for `--help` (what `--set KEY=VALUE` and a config file take)."""
    cfg = cfg or ReconstructConfig()
    lines = []
    for path, doc in field_docs(cfg).items():
        value = functools.reduce(getattr, path.split("."), cfg)
        lines.append(f"  {path} = {_scalar(value)}\n      {doc}")
    return "\n".join(lines)


# ---- YAML out -------------------------------------------------------------------------------------------
def _plain(value):
    """A YAML-safe form of a field value (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


def _scalar(value) -> str:
    """One field value as YAML flow text: 90.0, [3.0, 3.5], null, 'a: b'."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=math.inf)
    return text.removesuffix("\n").removesuffix("\n...")  # a lone scalar is dumped as a document with its end


def to_yaml(cfg: ReconstructConfig, header: list[str] | tuple[str, ...] = ()) -> str:
    """The whole config as YAML, each field under its docstring as a comment; `header` lines go on top."""
    docs, leaf_docs = class_docs(), field_docs(cfg)
    lines = [f"# {h}" for h in header]

    def emit(obj, indent: str, prefix: str) -> None:
        own = docs.get(type(obj).__name__, {})
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):  # a section: its class docstring says more than the field's
                lines.extend(["", f"{indent}# {' '.join((type(value).__doc__ or own.get(f.name, '')).split())}",
                              f"{indent}{f.name}:"])
                emit(value, indent + "  ", f"{prefix}{f.name}.")
                continue
            if leaf_docs.get(prefix + f.name):
                lines.append(f"{indent}# {leaf_docs[prefix + f.name]}")
            lines.append(f"{indent}{f.name}: {_scalar(value)}")

    emit(cfg, "", "")
    return "\n".join(lines) + "\n"


def header_lines(cfg: ReconstructConfig) -> list[str]:
    """The comment lines on top of a written config: what it is, its hash and how to use it."""
    from c123 import __version__

    return [f"c123 {__version__} config: preset {cfg.preset}, config hash {cfg.hash()}",
            "Rerun with: c123 reconstruct IMAGE --config THIS_FILE (any subset of these fields works; "
            "--set KEY=VALUE goes on top)"]


# ---- YAML in --------------------------------------------------------------------------------------------
MAX_CONFIG_BYTES = 256 * 1024
"""Largest config file read: the whole resolved config with its comments is about 15 kB."""
MAX_CONFIG_VALUES = 10_000
"""Most values a config file may hold once YAML aliases are expanded (the config has about 150 fields)."""
_WRITE_ONE = "e.g. one written by `c123 config show paper > FILE.yaml`"


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML config file as {'section.field': value}; ConfigFileError naming the file and the fix.

    Bounded before anything is built from it: a file over MAX_CONFIG_BYTES is not parsed, and one whose
    values, aliases expanded, number more than MAX_CONFIG_VALUES (a "billion laughs" alias bomb) is refused
    before any value is used or printed."""
    path = Path(path)
    try:
        with open(path, "rb") as f:  # read at most one byte past the bound (a FIFO or /dev/zero ends too)
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigFileError(f"config file {path} is over {MAX_CONFIG_BYTES:,} bytes, more than a config holds: "
                                  f"pass a YAML file of config fields, {_WRITE_ONE}")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigFileError(f"config file {path} cannot be read ({type(err).__name__}): pass a YAML file, "
                              f"{_WRITE_ONE}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigFileError(f"config file {path}{where} is not valid YAML ({problem}): fix that line") from None
    except RecursionError:
        raise ConfigFileError(f"config file {path} is nested too deeply to be a config: pass a YAML file of "
                              f"config fields, {_WRITE_ONE}") from None
    if count_values(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigFileError(f"config file {path} holds more than {MAX_CONFIG_VALUES:,} values (YAML aliases "
                              "expanded), more than a config has: remove the long lists or repeated aliases")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path} holds a {type(data).__name__}, not a mapping of fields: write "
                              "e.g. 'train:' and under it '  nerf_iters: 100'")
    return _flatten(data, path)


def _flatten(data: dict, path: Path, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    sections = {f.name for f in dataclasses.fields(ReconstructConfig) if f.name not in ("preset", "seed")}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path, name + "."))
        elif not prefix and str(key) in sections:
            raise ConfigFileError(f"config file {path}: '{key}' is a section, so its value must be a mapping of "
                                  f"fields (e.g. '{key}:' then indented 'field: value' lines), not {value!r}")
        else:
            flat[name] = value
    return flat


# ---- resolution -------------------------------------------------------------------------------------
def parse_variant(spec: str) -> tuple[str, str | None]:
    """'consistent123' -> ('consistent123', None); 'consistent123:linear' / '@linear' -> (.., 'linear')."""
    spec = str(spec).strip()
    for sep in (":", "@"):
        if sep in spec:
            name, shape = spec.split(sep, 1)
            return name.strip(), shape.strip()
    return spec, None


def resolve_config(preset_name: str | None = None, variant_spec: str | None = None, seed: int | None = None,
                   overrides: list[str] | None = None, *, config_file: str | Path | None = None,
                   check_device: bool = False) -> ReconstructConfig:
    """The checked config of a command or a benchmark: preset -> config file -> seed and variant[:shape]
    (`parse_variant`) -> `--set` overrides, in that order; each later one wins.

    The preset is `preset_name`, else the file's `preset`, else paper (naming two different ones is an error);
    the tiny presets' models are in c123.config.tiny_models_dir(). Every value is checked
    (c123.config_checks.validate); the device only with check_device (a cluster checks it on its GPU node)."""
    from c123.config_checks import validate
    from c123.schedules import SHAPES, get_variant

    cfg = _preset_and_file(preset_name, config_file)
    if seed is not None:
        cfg.seed = seed
    if variant_spec is not None:
        name, shape = parse_variant(variant_spec)
        get_variant(name)
        cfg.schedule.variant = name
        if shape is not None:
            if shape not in SHAPES:
                raise C123Error(f"unknown weight shape '{shape}' in variant '{variant_spec}': use one of "
                                f"{', '.join(SHAPES)}")
            cfg.schedule.weight_shape = shape
    apply_overrides(cfg, list(overrides or []))
    return validate(cfg, check_device=check_device)


def _preset_and_file(preset_name: str | None, config_file: str | Path | None) -> ReconstructConfig:
    """The preset with a config file's fields on top."""
    from_file = read_config_file(config_file) if config_file is not None else {}
    file_preset = from_file.get("preset")
    if preset_name and file_preset and preset_name != file_preset:
        raise ConfigFileError(f"config file {config_file} starts from preset '{file_preset}' but --preset says "
                              f"'{preset_name}': drop one of them")
    name = preset_name or file_preset or "paper"
    if name not in PRESETS:
        where = f"config file {config_file}: " if name == file_preset and not preset_name else ""
        raise C123Error(f"{where}unknown preset '{name}': use one of {', '.join(PRESETS)}")
    cfg = preset(name)
    try:
        apply_overrides(cfg, from_file)
    except C123Error as err:
        raise ConfigFileError(f"config file {config_file}: {err}") from None
    return cfg
