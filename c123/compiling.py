"""torch.compile for the hot paths, switched on per training stage (`train.compile`).

The hot paths (the NeRF field, the volume renderer's per-chunk work, the rasteriser, marching tets) are plain
functions marked `@hot`. They run eagerly unless a stage runs them inside `enabled(True)` (its step functions are
wrapped by `within`): then each runs its
compiled version (dynamic shapes, compiled on first use and cached for the process). The compiled code does the
same arithmetic in fused kernels; random draws stay outside (dynamo cannot trace a torch.Generator), so the
marked functions take their random numbers as tensors.

Ops whose output size depends on the data (nonzero in the occupancy grid's compaction, marching tets' counts)
are traced into the graph (`capture_dynamic_output_shape_ops`) instead of splitting it.
"""

from __future__ import annotations

import contextlib
import functools
import threading

import torch

from c123.errors import C123Error

COMPILE_MODES = ("auto", "on", "off")
_state = threading.local()


def resolve(mode: str, device) -> bool:
    """Whether `train.compile` = mode compiles on `device`: 'auto' on CUDA only (on CPU the compilation costs
    more than a short run saves), 'on' / 'off' as said."""
    if mode not in COMPILE_MODES:
        raise C123Error(f"train.compile='{mode}' is not valid: use one of {', '.join(COMPILE_MODES)}")
    return mode == "on" or (mode == "auto" and torch.device(device).type == "cuda")


def is_enabled() -> bool:
    return getattr(_state, "on", False)


@contextlib.contextmanager
def enabled(on: bool):
    """Run the `@hot` functions compiled (on=True) or eagerly within this block (this thread)."""
    previous = is_enabled()
    _state.on = on
    if on:
        torch._dynamo.config.capture_dynamic_output_shape_ops = True
        torch._dynamo.config.capture_scalar_outputs = True
    try:
        yield
    finally:
        _state.on = previous


def within(on: bool, fn):
    """`fn` that runs inside `enabled(on)` (a stage's step functions: what they call runs compiled or not)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        with enabled(on):
            return fn(*args, **kwargs)

    return run


def as_now(fn):
    """`fn` pinned to the mode it is called under now (compiled or eager), wherever it later runs. A checkpointed
    chunk is recomputed in the backward, after the stage's `enabled` block has closed, and must run the graph its
    forward ran: torch.utils.checkpoint compares the recomputed saved tensors with the forward's and raises on a
    difference (eager and compiled code save different tensors)."""
    return within(is_enabled(), fn)


def hot(fn):
    """Mark a hot path: compiled (dynamic shapes) inside `enabled(True)`, eager otherwise."""
    compiled = None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal compiled
        if torch.compiler.is_compiling() or not is_enabled():
            return fn(*args, **kwargs)  # inside another compiled region dynamo traces it inline
        if compiled is None:
            compiled = torch.compile(fn, dynamic=True)
        return compiled(*args, **kwargs)

    run.eager = fn
    return run
