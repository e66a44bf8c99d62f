"""Find model weights on this machine (a local folder, or a Hub id already in the Hugging Face cache), pick
each component's weights variant, and load frozen components in the dtype the run's precision asks for.

The network is never used unless C123_ALLOW_DOWNLOAD=1, so a missing model fails at once (in
milliseconds) with a one-line WeightsMissingError that names the model, its role and the download command.
When downloading, only the files that will be loaded are fetched: configs, tokenizer files, and per
component the one weights file of the preferred variant (`select_files`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from c123.errors import WeightsMissingError

ALLOW_DOWNLOAD_ENV = "C123_ALLOW_DOWNLOAD"
DEFAULT_VARIANT = "default"
"""Label of a component's unsuffixed weights file (e.g. unet/diffusion_pytorch_model.safetensors)."""
STANDARD_VARIANTS: tuple[str | None, ...] = (None, "fp16")
"""Variant preference of Stable Diffusion and CLIP: the unsuffixed file (what a plain `from_pretrained`
loads, as the official sd_utils.py does), else the fp16 copy some repositories hold alone."""
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# transformers/diffusers weight names: base[.variant][-0000k-of-0000n].(safetensors|bin); root checkpoints
# such as SD's v2-1_512-ema-pruned.safetensors have another base and are never selected
_WEIGHT_NAME = re.compile(r"(diffusion_pytorch_model|model|pytorch_model)(?:\.(\w+))?(?:-\d{5}-of-\d{5})?"
                          r"\.(safetensors|bin)")


def resolve(model_id_or_dir: str, what: str, variants: tuple[str | None, ...] = STANDARD_VARIANTS,
            cache_dir: str | None = None) -> str:
    """The local directory holding `model_id_or_dir` (a folder, or a Hub id in the HF cache `cache_dir`, default
    Hugging Face's); `variants` is the weights-variant preference used to choose what a download fetches."""
    path = Path(model_id_or_dir).expanduser()
    if path.is_dir():
        _check_complete(path, what, "point the config at a model folder or rewrite tiny models with "
                                    "`c123 models tiny DIR`")
        return str(path.resolve())
    if not _HUB_ID.match(str(model_id_or_dir)):
        raise WeightsMissingError(
            f"{what}: model folder '{model_id_or_dir}' does not exist; write tiny test models with "
            f"`c123 models tiny DIR` or point the config at a downloaded model folder or Hub id")
    snapshot = _from_hub(model_id_or_dir, what, variants, cache_dir)
    _check_complete(Path(snapshot), what, f"re-download it with `hf download {model_id_or_dir}`")
    return snapshot


def _from_hub(repo_id: str, what: str, variants: tuple[str | None, ...], cache_dir: str | None = None) -> str:
    from huggingface_hub import HfApi, snapshot_download

    cache_dir = str(Path(cache_dir).expanduser()) if cache_dir else None
    allow = os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"
    try:
        if not allow:
            return snapshot_download(repo_id, local_files_only=True, cache_dir=cache_dir)
        wanted = select_files(HfApi().list_repo_files(repo_id), variants)
        return snapshot_download(repo_id, allow_patterns=wanted, cache_dir=cache_dir)
    except Exception as exc:  # offline miss, gated repo, network error: all mean "not available here"
        hint = "" if allow else f" (or set {ALLOW_DOWNLOAD_ENV}=1 to let c123 download it)"
        where = f"Hugging Face cache {cache_dir} (prior.model_cache)" if cache_dir else "local Hugging Face cache"
        into = f" --cache-dir {cache_dir}" if cache_dir else ""
        raise WeightsMissingError(
            f"{what}: model '{repo_id}' is not in the {where} ({type(exc).__name__}); "
            f"download it with `hf download {repo_id}{into}`{hint}, or use `c123 models tiny DIR` for tiny test "
            f"models") from exc


def _check_complete(path: Path, what: str, fix: str) -> None:
    if not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
        raise WeightsMissingError(f"{what}: '{path}' has neither model_index.json nor config.json; {fix}")


def _weights_by_variant(names) -> dict[str | None, list[str]]:
    """Weight file names grouped by variant (None = unsuffixed); other names are ignored."""
    found: dict[str | None, list[str]] = {}
    for name in names:
        match = _WEIGHT_NAME.fullmatch(name)
        if match:
            found.setdefault(match.group(2), []).append(name)
    return found


def _preferred(found: dict[str | None, list[str]], variants) -> tuple[str | None, list[str]] | None:
    """The first preferred variant present and its files (safetensors over pickled .bin), else None."""
    for variant in variants:
        if variant in found:
            files = found[variant]
            safe = [f for f in files if f.endswith(".safetensors")]
            return variant, sorted(safe or files)
    return None


def select_files(repo_files: list[str], variants: tuple[str | None, ...]) -> list[str]:
    """The files of a Hub repository that loading will read: every *.json and *.txt, and in each folder
    the weights of the first variant of `variants` it holds (root weights only for single-model repos)."""
    keep = [f for f in repo_files if f.endswith((".json", ".txt"))]
    folders: dict[str, list[str]] = {}
    for f in repo_files:
        folder, _, name = f.rpartition("/")
        folders.setdefault(folder, []).append(name)
    pipeline = "model_index.json" in repo_files
    for folder, names in folders.items():
        if pipeline and folder == "":
            continue
        chosen = _preferred(_weights_by_variant(names), variants)
        if chosen:
            keep += [f"{folder}/{name}" if folder else name for name in chosen[1]]
    return sorted(set(keep))


def pick_variant(folder: Path, variants: tuple[str | None, ...], what: str) -> str | None:
    """The first variant of `variants` whose weights file is in `folder` (None = the unsuffixed file)."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    chosen = _preferred(_weights_by_variant(names), variants)
    if chosen is None:
        labels = ", ".join(variant_label(v) for v in variants)
        raise WeightsMissingError(f"{what}: '{folder}' holds no weights file of the variants {labels}; "
                                  f"re-download the model or rewrite tiny models with `c123 models tiny DIR`")
    return chosen[0]


def variant_label(variant: str | None) -> str:
    """The name a loaded variant is recorded under (result.json model_ids)."""
    return variant or DEFAULT_VARIANT


def summarize_variants(loaded: dict[str, str]) -> str:
    """One label when every component loaded the same variant, else 'component=variant,...'."""
    labels = set(loaded.values())
    return labels.pop() if len(labels) == 1 else ",".join(f"{k}={v}" for k, v in sorted(loaded.items()))


def runtime_dtypes(precision: str, device, half_weights: bool):
    """(weights dtype, fp16 autocast on/off) of a prior: `-O` on CUDA with precision 'fp16' (half weights
    where the official loads them in fp16, autocast for every forward), float32 and no autocast otherwise."""
    import torch  # here, so resolving weights (and failing fast when they are missing) stays light

    fp16 = precision == "fp16" and torch.device(device).type == "cuda"
    return (torch.float16 if fp16 and half_weights else torch.float32), fp16


def autocast(enabled: bool, device):
    """float16 autocast on `device` when enabled (the official trainer wraps train_step in it under -O)."""
    import contextlib

    import torch

    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.float16)


def quiet_loading() -> None:
    """No per-shard progress bars from transformers and diffusers: they would drown the run's own output."""
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def load_frozen(model_cls, path: str, subfolder: str, dtype, device,
                variants: tuple[str | None, ...] = STANDARD_VARIANTS):
    """One component of a model folder, in eval mode without gradients, with its weights variant picked by
    `variants` and cast to `dtype` (an fp16 file loads upcast when dtype is float32): (model, variant label)."""
    folder = Path(path) / subfolder
    variant = pick_variant(folder, variants, f"{Path(path).name}/{subfolder}".rstrip("/."))
    kwargs = {"subfolder": subfolder} if subfolder not in ("", ".") else {}
    try:
        model = model_cls.from_pretrained(path, variant=variant, dtype=dtype, **kwargs)
    except Exception as err:  # noqa: BLE001 - only a damaged file is turned into the one line; the rest re-raised
        if not _damaged_file(err):
            raise
        raise WeightsMissingError(f"{Path(path).name}/{subfolder}".rstrip("/.") + f": the model files in {folder} "
                                  f"cannot be loaded ({type(err).__name__}: {' '.join(str(err).split())[:160]}), "
                                  f"so they are damaged or incomplete; {_refetch(Path(path))}") from err
    fast_kernels(model, device)
    return model.to(device).eval().requires_grad_(False), variant_label(variant)


def _damaged_file(err: BaseException) -> bool:
    """Whether a from_pretrained failure is a damaged or truncated file (not a bug): an unreadable file, a
    safetensors header or a pickle cut short, a config that is not JSON, tensors of the wrong shape."""
    import pickle

    if isinstance(err, (OSError, EOFError, pickle.UnpicklingError, ValueError)):
        return True
    if type(err).__name__ == "SafetensorError":  # safetensors' Rust error, not importable as a Python class
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in (
        "PytorchStreamReader", "Error(s) in loading state_dict", "unexpected EOF", "deserializ"))


def _refetch(path: Path) -> str:
    """How to get a model folder's files whole again: the Hub download of a snapshot in the HF cache, tiny
    models rewritten, else a fresh copy."""
    for part in path.parts:
        if part.startswith("models--"):
            repo = part[len("models--"):].replace("--", "/", 1)
            return f"re-download it with `hf download {repo} --force-download`"
    if (path / "c123-tiny.json").is_file():
        return f"remove {path} and rewrite the tiny models with `c123 models tiny {path.parent}`"
    return f"copy or download the model into {path} again"


def fast_kernels(model, device) -> bool:
    """On CUDA: attention through PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels; the
    official enables xformers) in every diffusers attention block, and TF32 matmuls and convolutions for what
    stays in float32 (Zero-1-to-3 outside autocast, the SDS arithmetic, the field). Elsewhere nothing changes:
    the arithmetic on CPU is the reference. Returns whether it changed anything."""
    import torch

    if torch.device(device).type != "cuda":
        return False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if hasattr(model, "set_attn_processor"):  # diffusers models; transformers' CLIP uses SDPA by default
        from diffusers.models.attention_processor import AttnProcessor2_0

        model.set_attn_processor(AttnProcessor2_0())
    return True
