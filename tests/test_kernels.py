"""The fused Triton hash-grid kernels against the PyTorch reference, run on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is first imported, so the comparison runs in a fresh interpreter
(a subprocess) whatever this test process imported before.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

COMPARE = r"""
import json, os
import torch
from c123.hashgrid import HashGrid

torch.manual_seed(0)
report = {}
for interpolation in ("smoothstep", "linear"):
    # 2 dense levels (4^3, 8^3 rows), 2 hashed ones (1024 rows): both index paths; points partly outside the bound
    size = dict(num_levels=4, level_dim=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=64,
                bound=1.0, interpolation=interpolation)
    ref, fused = HashGrid(backend="torch", **size), HashGrid(backend="triton", **size)
    assert fused.backend_for("cpu") == "triton"
    with torch.no_grad():
        ref.embeddings.uniform_(-1, 1)
        fused.embeddings.copy_(ref.embeddings)
    ref.max_level = fused.max_level = 0.75  # 3 of 4 levels: the last encodes to zeros
    x = torch.rand(300, 3) * 2.4 - 1.2
    x[:4] = torch.tensor([[1.0, 1.0, 1.0], [-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, -1.0, 0.5]])  # corners, ties
    xs = [x.clone().requires_grad_(True) for _ in range(2)]
    outs = [grid(p) for grid, p in zip((ref, fused), xs)]
    w = torch.randn_like(outs[0])
    for out in outs:
        (out * w).sum().backward()
    report[interpolation] = {
        "out": (outs[0] - outs[1]).abs().max().item(),
        "grad_table": (ref.embeddings.grad - fused.embeddings.grad).abs().max().item(),
        "grad_x": ((xs[0].grad - xs[1].grad).abs() / (1 + xs[0].grad.abs())).max().item(),
        "last_level_zero": bool((outs[1][:, 6:] == 0).all()),
        "grad_x_nonzero": bool(xs[1].grad.abs().sum() > 0),
    }
print(json.dumps(report))
"""


def test_triton_hashgrid_matches_the_torch_reference_in_outputs_and_gradients_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", COMPARE], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for interpolation, diff in report.items():
        assert diff["out"] <= 1e-5, (interpolation, diff)
        assert diff["grad_table"] <= 1e-5, (interpolation, diff)
        assert diff["grad_x"] <= 1e-5, (interpolation, diff)  # relative to the gradient's size (it reaches ~100)
        assert diff["last_level_zero"] and diff["grad_x_nonzero"], (interpolation, diff)
