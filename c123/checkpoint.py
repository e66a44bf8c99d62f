"""Checkpoints that resume only the same work: identity, atomic writes, corrupt files set aside.

A checkpoint carries the identity of what wrote it: a digest of the input (the preprocessed image and
depth and the prompt), the resolved config hash and the code version. It is resumed only for the same
input and config; a different code version resumes but is announced. An unreadable file is renamed to
`<name>.corrupt` (announced) and the run recomputes; a full disk is reported as such with the path.
"""

from __future__ import annotations

import errno
import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from c123.atomic import atomic_path
from c123.errors import C123Error

FORMAT = 2
"""Checkpoint layout version: 2 = identity + run state + float-only module states."""
STAGES = ("dmtet", "nerf")
"""Checkpoint files by stage, furthest first (`checkpoints/<stage>.pt`)."""


def input_digest(rgba: np.ndarray, depth: np.ndarray | None, prompt: str) -> str:
    """sha256 over the preprocessed image bytes, the depth bytes (or their absence) and the prompt."""
    h = hashlib.sha256()
    for name, array in (("rgba", rgba), ("depth", depth)):
        h.update(name.encode() + b"\0")
        if array is not None:
            array = np.ascontiguousarray(array)
            h.update(f"{array.dtype}{array.shape}".encode())
            h.update(array.tobytes())
        h.update(b"\0")
    h.update(prompt.encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class CheckpointIdentity:
    """What a checkpoint was written for."""

    input_digest: str
    config_hash: str
    code_version: str

    def mismatch(self, other: dict) -> str | None:
        """Why a checkpoint written for `other` cannot resume this run (None when it can)."""
        if other.get("input_digest") != self.input_digest:
            return "it was written for another input (image, depth or prompt)"
        if other.get("config_hash") != self.config_hash:
            return f"it was written for another config ({other.get('config_hash')}, now {self.config_hash})"
        return None


@dataclass
class Resume:
    """The checkpoint a run continues from (payload None: start fresh) and what the user is told."""

    payload: dict | None = None
    notices: list[str] = field(default_factory=list)
    from_version: str | None = None
    """The code version that wrote the payload, when it differs from this one."""


def find_resumable(ckpt_dir: Path, identity: CheckpointIdentity, device) -> Resume:
    """The furthest checkpoint written for this identity; others are ignored, corrupt ones set aside."""
    resume = Resume()
    for stage in STAGES:
        path = Path(ckpt_dir) / f"{stage}.pt"
        if not path.is_file():
            continue
        payload = _read(path, device, resume.notices)
        if payload is None:
            continue
        why = identity.mismatch(payload["identity"])
        if why is not None:
            resume.notices.append(f"ignoring {path}: {why}; starting fresh")
            continue
        written_by = payload["identity"].get("code_version")
        if written_by != identity.code_version:
            resume.from_version = written_by
            resume.notices.append(f"resuming {path} written by code version {written_by} (now "
                                  f"{identity.code_version})")
        resume.payload = payload
        return resume
    return resume


def _read(path: Path, device, notices: list[str]) -> dict | None:
    """The payload of `path`, or None after setting an unreadable file aside as `<name>.corrupt`."""
    try:
        # weights_only: a checkpoint is tensors, numbers and strings; a hostile pickle cannot run code
        payload = torch.load(path, map_location=device, weights_only=True)
        if not (isinstance(payload, dict) and payload.get("format") == FORMAT and "identity" in payload):
            raise ValueError(f"not a format-{FORMAT} c123 checkpoint")
    except Exception as err:  # noqa: BLE001 - any unreadable file is set aside, whatever the reader raised
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        notices.append(f"{path} is unreadable ({type(err).__name__}): set aside as {aside.name}; recomputing")
        return None
    return payload


def save_checkpoint(path: Path, identity: CheckpointIdentity, body: dict) -> None:
    """Write `body` with its identity atomically; a full disk or an unwritable folder is one line."""
    payload = {"format": FORMAT, "identity": asdict(identity), **body}
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(payload, f)
    except (OSError, RuntimeError) as err:
        cause = _os_error(err)
        if cause is None:
            raise
        if cause.errno == errno.ENOSPC:
            raise C123Error(f"disk full while writing the checkpoint {path}: free space on that disk or pass "
                            "--out on another one, then rerun to resume") from err
        raise C123Error(f"cannot write the checkpoint {path} ({cause.strerror or cause}): check the folder's "
                        "permissions and free space") from err


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err` (torch wraps a failed write of its file object in a RuntimeError)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
