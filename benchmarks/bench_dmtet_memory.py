"""DMTet stage on CPU at the paper sizes: the tet grid next to the official one, peak RSS of a training step, and
the bytes of a DMTet-stage checkpoint.

A checkpoint is what the single training loop stores: the state_dict of the DMTet module (sdf, deform, tet_scale)
and of the NeRF field (hash table + MLP), the Adan optimizer state over both, and the float EMA copy of their
parameters. One step is: marching tets, one rasterised render at dmtet.render_size with the NeRF's albedo, the
official mesh regularisers, backward, Adan step, EMA update. The SDF starts from the blob of a fresh paper NeRF
(init threshold min(mean density, 10)), so the surface is a sphere of radius ~0.34.

"Before" figures are those measured on the 6-tets-per-cube grid (issue 9): 14.9 GiB peak RSS, 8.26 GiB per
checkpoint (its grid vertices and int64 tet indices were buffers, stored in the model and again in the EMA).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_dmtet_memory.py [--resolution 256] [--size 1024] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import resource
import tempfile
import time

import torch

from c123.cameras import orbit_cameras
from c123.config import paper
from c123.dmtet import DMTet, init_threshold, mesh_laplacian, mesh_normal_consistency, render_mesh, tet_grid
from c123.nerf import NeRFField

OFFICIAL = {64: (36_562, 192_492), 256: (2.2e6, 12e6)}
"""Official grids (lyk412/Consistent123 tets/): 64 from tets/64_tets.npz; 256 as issue 9 states it (about)."""
GIB = 2 ** 30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=paper().dmtet.tet_resolution)
    parser.add_argument("--size", type=int, default=paper().dmtet.render_size, help="render size of the step")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = paper()
    cfg.dmtet.tet_resolution = args.resolution
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as cache:
        tic = time.perf_counter()
        verts, tets = tet_grid(args.resolution, cache)
        print(f"tet grid {args.resolution}: {len(verts):,} vertices, {len(tets):,} tets "
              f"(generated in {time.perf_counter() - tic:.1f} s); 6-tet grid: {(args.resolution + 1) ** 3:,} / "
              f"{6 * args.resolution ** 3:,}", end="")
        if args.resolution in OFFICIAL:
            print(f"; official: {OFFICIAL[args.resolution][0]:,.0f} / {OFFICIAL[args.resolution][1]:,.0f}")
        print(f"  at 64: {tuple(map(len, tet_grid(64, cache)))} vs official {OFFICIAL[64]}")
        del verts, tets

        field = NeRFField(cfg.nerf)
        dmtet = DMTet(cfg.dmtet, cache)
        tic = time.perf_counter()
        with torch.no_grad():
            threshold = init_threshold(field.density, cfg.nerf.bound, cfg.dmtet, torch.Generator().manual_seed(0))
            dmtet.init_from_density(field.density, threshold)
        print(f"init: threshold {threshold:.2f}, tet_scale {dmtet.tet_scale.tolist()} "
              f"({time.perf_counter() - tic:.1f} s); peak RSS {peak_rss_gib():.2f} GiB")

        from pytorch_optimizer import Adan
        opt = Adan([{"params": list(dmtet.parameters())},
                    {"params": field.grid_parameters(), "lr": cfg.train.lr * cfg.train.grid_lr_scale},
                    {"params": field.other_parameters()}], lr=cfg.train.lr)
        params = [*dmtet.parameters(), *field.parameters()]
        ema = [p.detach().clone() for p in params]

        tic = time.perf_counter()
        mesh = dmtet.get_mesh()
        cams = orbit_cameras(torch.tensor([80.0]), torch.tensor([30.0]), cfg.camera.ref_radius, cfg.camera.fovy)
        out = render_mesh(mesh, lambda x: field(x)[1], cams, args.size, args.size, shading="lambertian",
                          ambient=0.3)
        loss = (out.rgb.square().mean() + cfg.loss.mesh_normal_consistency * mesh_normal_consistency(mesh)
                + cfg.loss.mesh_laplacian * mesh_laplacian(mesh))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - cfg.train.ema_decay)
        print(f"step: mesh {len(mesh.verts):,} vertices / {len(mesh.faces):,} faces, render {args.size}^2 "
              f"({time.perf_counter() - tic:.1f} s); peak RSS {peak_rss_gib():.2f} GiB")

        checkpoint = {"dmtet": dmtet.state_dict(), "field": field.state_dict(), "opt": opt.state_dict(),
                      "ema": ema}
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        print(f"checkpoint: {buffer.tell() / GIB:.3f} GiB ({buffer.tell():,} bytes) (before: 8.26 GiB)")
        print(f"peak RSS of the DMTet stage: {peak_rss_gib():.2f} GiB (before: 14.9 GiB)")


if __name__ == "__main__":
    main()
