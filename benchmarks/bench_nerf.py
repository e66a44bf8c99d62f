"""Rays per second of the NeRF renderer (forward + backward) at 128x128, on CPU and on CUDA when present.

Usage: python benchmarks/bench_nerf.py [--quick] [--size 128] [--preset paper|tiny] [--shading albedo|lambertian]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from c123.cameras import orbit
from c123.config import preset
from c123.nerf import NeRFField
from c123.volume_render import RaySettings, render_nerf


def bench(device: str, cfg, size: int, shading: str, repeats: int) -> tuple[float, str]:
    """(rays/s, hash-grid backend) of a full-image render plus backward, over `repeats` after a warm-up."""
    field = NeRFField(cfg).to(device)
    cams = orbit(1, polar=80.0, device=device)

    def step():
        out = render_nerf(field, cams, size, size, RaySettings(shading, cfg.num_samples, cfg.num_importance))
        out.rgb.mean().backward()

    step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return repeats * size * size / (time.perf_counter() - start), field.encoder.backend_for(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32, tiny preset, one repeat")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--shading", default="albedo")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size, name, repeats = (32, "tiny", 1) if args.quick else (args.size, args.preset, args.repeats)
    cfg = preset(name).nerf
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"config: preset={name} {dataclasses.asdict(cfg)}")
    print(f"render: {size}x{size}, shading={args.shading}, threads={torch.get_num_threads()}")
    for device in devices:
        # tinycudann only runs on CUDA: the CPU figure is always the torch backend
        device_cfg = dataclasses.replace(cfg, backend="torch") if device == "cpu" else cfg
        rate, backend = bench(device, device_cfg, size, args.shading, repeats)
        print(f"{device}: {rate:,.0f} rays/s forward+backward ({size}x{size}, "
              f"{cfg.num_samples}+{cfg.num_importance} samples/ray, hash grid backend {backend})")


if __name__ == "__main__":
    main()
