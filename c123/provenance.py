"""What produced a result: code version, device, and timestamps recorded next to every output."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import c123

_REPO = Path(__file__).resolve().parent.parent


CODE_VERSION_ENV = "C123_CODE_VERSION"
"""Set by a driver that ships its code to other machines (a copy without the checkout's git history)."""


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """$C123_CODE_VERSION, else `git describe --always --dirty` of the checkout when there is one, else the
    package version."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]
    try:
        out = subprocess.run(["git", "-C", str(_REPO), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return f"{c123.__version__}+g{out.stdout.strip()}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return c123.__version__


def device_name(device) -> str:
    """A readable device label, e.g. 'cpu' or 'cuda:0 (NVIDIA H100 80GB HBM3)'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def resolve_device(name: str = "auto"):
    """'auto' -> cuda when available else cpu; anything else as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def offline_defaults() -> None:
    """Model loading stays offline (HF_HUB_OFFLINE=1) unless the user chose otherwise: C123_ALLOW_DOWNLOAD=1
    lets c123.priors.weights download, and an HF_HUB_OFFLINE already set is kept. Call before loading models."""
    import os

    from c123.priors.weights import ALLOW_DOWNLOAD_ENV

    os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get(ALLOW_DOWNLOAD_ENV) == "1" else "1")
