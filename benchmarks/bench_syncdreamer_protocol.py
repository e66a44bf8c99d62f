"""Cost per case of SyncDreamer's GSO protocol (the `sd_*` columns): prints seconds per step for one synthetic
scene (its true mesh built once per process, then a prediction's depth maps, points, volume and Chamfer) and for
the chicken fixture's ground truth, with the machine's load (the numbers scale with it).

    .venv/bin/python benchmarks/bench_syncdreamer_protocol.py [--scene toy]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    print(f"{label:<44} {time.perf_counter() - t:7.2f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scene", default="toy")
    args = p.parse_args(argv)
    import trimesh

    from c123 import metrics as M
    from c123_pipeline.tasks import metrics as T

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    truth = timed(f"synthetic '{args.scene}': true mesh, points, volume", lambda: T._scene_truth(args.scene))
    v, f = T._scene_mesh(args.scene)
    pred = truth["to_frame"](v * 1.02)  # a prediction 2% too large
    depth = timed("prediction: 16 depth maps (c123 rasteriser)", lambda: M.syncdreamer_depth_maps(pred, f))
    pts = timed("prediction: points + voxel downsampling", lambda: M.syncdreamer_points(*depth))
    timed("Chamfer", lambda: M.syncdreamer_chamfer(pts, truth["points"]))
    inside = timed("prediction: mesh2sdf 64^3 volume", lambda: M.mesh_inside_grid(pred, f))
    print(f"  ({len(f)} faces; Chamfer {M.syncdreamer_chamfer(pts, truth['points']):.4f}, volume IoU "
          f"{M.volume_iou(inside, truth['inside']):.4f})")
    fixture = ROOT / "tests" / "fixtures" / "syncdreamer_chicken"
    mesh = trimesh.load(fixture / "mesh.ply", process=False)
    gt = M.normalize_ground_truth(mesh.vertices, 270.0)
    timed(f"GSO chicken ({len(mesh.faces)} faces): mesh2sdf volume", lambda: M.mesh_inside_grid(gt, mesh.faces))
    depth = [M.read_syncdreamer_depth(fixture / "gt" / f"{k:03}-depth.png") for k in range(16)]
    timed("GSO chicken: points from the 16 depth PNGs",
          lambda: M.syncdreamer_points(np.stack([d for d, _ in depth]), np.stack([m for _, m in depth])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
