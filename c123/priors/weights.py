"""Find model weights on this machine: a local folder, or a Hub id already in the Hugging Face cache.

The network is never used unless C123_ALLOW_DOWNLOAD=1, so a missing model fails at once (in
milliseconds) with a one-line WeightsMissingError that names the model, its role and the download command.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from c123.errors import WeightsMissingError

ALLOW_DOWNLOAD_ENV = "C123_ALLOW_DOWNLOAD"
# what a diffusers or transformers folder needs; skips the single-file checkpoints (SD's top-level
# v2-1_*.ckpt/.safetensors) and other frameworks' weights; openai/clip-* repos may only hold pytorch_model.bin
DOWNLOAD_PATTERNS = ["*.json", "*.txt", "*/*.safetensors", "model.safetensors", "pytorch_model.bin"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve(model_id_or_dir: str, what: str) -> str:
    """The local directory holding `model_id_or_dir` (a folder, or a Hub id in the local HF cache)."""
    path = Path(model_id_or_dir).expanduser()
    if path.is_dir():
        _check_complete(path, what, "point the config at a model folder or rewrite tiny models with "
                                    "`c123 models tiny DIR`")
        return str(path.resolve())
    if not _HUB_ID.match(str(model_id_or_dir)):
        raise WeightsMissingError(
            f"{what}: model folder '{model_id_or_dir}' does not exist; write tiny test models with "
            f"`c123 models tiny DIR` or point the config at a downloaded model folder or Hub id")
    snapshot = _from_hub(model_id_or_dir, what)
    _check_complete(Path(snapshot), what, f"re-download it with `hf download {model_id_or_dir}`")
    return snapshot


def _from_hub(repo_id: str, what: str) -> str:
    from huggingface_hub import snapshot_download

    allow = os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"
    try:
        return snapshot_download(repo_id, local_files_only=not allow,
                                 allow_patterns=DOWNLOAD_PATTERNS if allow else None)
    except Exception as exc:  # offline miss, gated repo, network error: all mean "not available here"
        hint = "" if allow else f" (or set {ALLOW_DOWNLOAD_ENV}=1 to let c123 download it)"
        raise WeightsMissingError(
            f"{what}: model '{repo_id}' is not in the local Hugging Face cache ({type(exc).__name__}); "
            f"download it with `hf download {repo_id}`{hint}, or use `c123 models tiny DIR` for tiny test "
            f"models") from exc


def _check_complete(path: Path, what: str, fix: str) -> None:
    if not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
        raise WeightsMissingError(f"{what}: '{path}' has neither model_index.json nor config.json; {fix}")


def variant(path: str, subfolder: str) -> str | None:
    """The weights variant to load: fp16 when a subfolder only holds `*.fp16.safetensors` (some Hub repos)."""
    files = [f.name for f in (Path(path) / subfolder).glob("*.safetensors")]
    return "fp16" if files and all(".fp16." in f for f in files) else None


def load_frozen(model_cls, path: str, subfolder: str, cfg_dtype: str, device):
    """One component of a diffusers folder, in eval mode without gradients; fp16 only when asked and on CUDA."""
    import torch  # here, so resolving weights (and failing fast when they are missing) stays light

    device = torch.device(device)
    dtype = torch.float16 if cfg_dtype == "float16" and device.type == "cuda" else torch.float32
    model = model_cls.from_pretrained(path, subfolder=subfolder, variant=variant(path, subfolder), dtype=dtype)
    return model.to(device).eval().requires_grad_(False)
