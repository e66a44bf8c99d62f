"""Rasteriser throughput: triangles/s of rasterize + interpolate + antialias, forward and backward.

Meshes are icospheres of increasing subdivision seen by a perspective camera, filling about half the image,
rendered as a batch of one view. Runs the torch backend on CPU, and every available backend on CUDA.

    .venv/bin/python benchmarks/bench_raster.py [--quick] [--resolution 128] [--repeats 5] [--threads N]

On a CPU shared with other busy processes, pass --threads 1: OpenMP threads that wait on each other's cores
make every op many times slower.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import trimesh

from c123.rasterizer import get_rasterizer


def scene(subdivisions: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Icosphere vertices [V,3] and faces [F,3] int32."""
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    return (torch.tensor(sphere.vertices, dtype=torch.float32, device=device),
            torch.tensor(sphere.faces, dtype=torch.int32, device=device))


def clip_space(verts: torch.Tensor) -> torch.Tensor:
    """Perspective projection of a unit sphere 3 units in front of a fovy-45 camera: [1,V,4]."""
    f = 1.0 / math.tan(math.radians(22.5))
    z = verts[:, 2] - 3.0
    return torch.stack([f * verts[:, 0], f * verts[:, 1], -1.02 * z - 0.2, -z], -1)[None]


def time_once(raster, verts, faces, resolution, device) -> tuple[float, float]:
    """(forward seconds, backward seconds) of one render of colour + coverage."""
    verts = verts.clone().requires_grad_(True)
    colour = torch.rand_like(verts, requires_grad=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    clip = clip_space(verts)
    rast = raster.rasterize(clip, faces, (resolution, resolution))
    rgb = raster.interpolate(colour[None], rast, faces)
    out = raster.antialias(torch.cat([rgb, (rast[..., 3:] > 0).float()], -1), rast, clip, faces)
    sync()
    mid = time.perf_counter()
    out.square().sum().backward()
    sync()
    return mid - start, time.perf_counter() - mid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller meshes, fewer repeats")
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    subdivisions = (3, 4, 5) if args.quick else (3, 4, 5, 6, 7)
    repeats = 2 if args.quick else args.repeats
    targets = [(torch.device("cpu"), "torch")]
    if torch.cuda.is_available():
        targets += [(torch.device("cuda"), "torch"), (torch.device("cuda"), "auto")]
    print(f"resolution {args.resolution}x{args.resolution}, median of {repeats} (after one warm-up), "
          f"{torch.get_num_threads()} CPU threads")
    print(f"{'device':<6} {'backend':<11} {'triangles':>9} {'fwd ms':>8} {'bwd ms':>8} {'Mtri/s fwd+bwd':>15}")
    for device, backend in targets:
        raster = get_rasterizer(backend, device)
        for sub in subdivisions:
            verts, faces = scene(sub, device)
            runs = [time_once(raster, verts, faces, args.resolution, device) for _ in range(repeats + 1)][1:]
            fwd = statistics.median(r[0] for r in runs)
            bwd = statistics.median(r[1] for r in runs)
            print(f"{device.type:<6} {raster.name:<11} {len(faces):>9} {1e3 * fwd:>8.1f} {1e3 * bwd:>8.1f} "
                  f"{len(faces) / (fwd + bwd) / 1e6:>15.2f}")


if __name__ == "__main__":
    main()
