"""Count the operations that make the host wait for the GPU, on any device (a TorchDispatchMode).

On CUDA the host runs ahead of the GPU and queues kernels; an op whose result the host must *read* stalls it
until the queue drains. Those ops are recorded here by what they do, so a CPU run shows the syncs the same code
makes on CUDA:
- scalar reads: `.item()`, `float(t)`, `bool(t)` (aten._local_scalar_dense, aten.is_nonzero), reads through
  `host_values`, and checks that read a flag (linalg's error check, equal); a CPU tensor's plain `.tolist()`
  reaches no dispatcher and is not seen (on CUDA it is a copy to the host, which is);
- outputs whose shape depends on the data: nonzero, unique, masked_select, boolean-mask indexing and
  assignment, repeat_interleave without output_size, bincount;
- copies between host and device that are not non_blocking (a CPU generator's draw moved to CUDA): only a
  CUDA run can show these.
Every other op counts towards `ops` (the eager op count).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
SCALAR_READS = {_aten._local_scalar_dense.default, _aten.is_nonzero.default, _aten.equal.default,
                _aten._linalg_check_errors.default}
DYNAMIC_SHAPES = {_aten.nonzero.default, _aten.nonzero_numpy.default, _aten.argwhere.default,
                  _aten.masked_select.default, _aten._unique.default, _aten._unique2.default,
                  _aten.unique_dim.default, _aten.unique_consecutive.default, _aten.bincount.default}
COPIES = {_aten._to_copy.default, _aten.copy_.default}


def _has_bool_index(indices) -> bool:
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices if i is not None)


def sync_reason(func, args, kwargs) -> str | None:
    """Why `func(*args, **kwargs)` synchronises the host on CUDA (its op name), or None when it does not."""
    if func in SCALAR_READS or func in DYNAMIC_SHAPES:
        return func.__name__
    packet = func.overloadpacket
    if packet in (_aten.index, _aten.index_put, _aten.index_put_, _aten._index_put_impl_) and _has_bool_index(args[1]):
        return f"{func.__name__} (boolean mask)"
    if packet is _aten.repeat_interleave and func is _aten.repeat_interleave.Tensor and \
            kwargs.get("output_size") is None:
        return func.__name__
    if func in COPIES and not kwargs.get("non_blocking", False):
        src = args[1] if func is _aten.copy_.default else args[0]
        dst = args[0].device if func is _aten.copy_.default else kwargs.get("device", src.device)
        if torch.is_tensor(src) and dst is not None and torch.device(dst).type != src.device.type:
            return f"{func.__name__} {src.device.type}->{torch.device(dst).type}"
    return None


_counting: list[SyncCounter] = []


def host_waits(device) -> bool:
    """Whether a data-dependent shape on `device` makes the host wait: on CUDA, and on CPU while a SyncCounter
    runs (it counts what the code does on CUDA). Where it does not, compacting first is the cheaper path."""
    return torch.device(device).type != "cpu" or bool(_counting)


@torch.compiler.disable  # compiled code splits here: the values become plain ints for what follows
def host_values(values: torch.Tensor) -> list:
    """A small tensor's values on the host, read in one go: where code means to wait for the device (a shape it
    must know). Counted by SyncCounter on every device (a CPU tensor's `tolist` reaches no dispatcher)."""
    if values.device.type == "cpu":
        for counter in _counting:
            counter.note("host_values")
    return values.tolist()  # on CUDA: one device-to-host copy, which the counter sees


class SyncCounter(TorchDispatchMode):
    """`with SyncCounter() as c: ...` then c.syncs (how many), c.reasons (by op), c.ops (every op),
    c.bytes (bytes read and written by the ops, a measure of eager memory traffic)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0
        self.reasons: Counter = Counter()
        self.ops = 0
        self.bytes = 0

    def __enter__(self):
        _counting.append(self)
        return super().__enter__()

    def __exit__(self, *exc):
        _counting.remove(self)
        return super().__exit__(*exc)

    def note(self, reason: str) -> None:
        self.syncs += 1
        self.reasons[reason] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.note(reason)
        out = func(*args, **kwargs)
        self.ops += 1
        if not func.is_view:
            self.bytes += _bytes(args) + _bytes(kwargs.values()) + _bytes([out])
        return out


def _bytes(values) -> int:
    total = 0
    for v in values:
        if torch.is_tensor(v):
            total += v.numel() * v.element_size()
        elif isinstance(v, (list, tuple)):
            total += _bytes(v)
    return total
