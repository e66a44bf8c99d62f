"""Time one SDS step (forward + backward to the rendered image) of each prior with the tiny models.

The priors run at the paper's input resolutions (Zero-1-to-3 256, Stable Diffusion 512) on a 128x128
render (the NeRF stage's novel-view size), on CPU and on CUDA when available. The UNets are tiny, so the
figures measure the plumbing (resize, VAE encode/backward, CFG batch) rather than the real models' cost.

    .venv/bin/python benchmarks/bench_priors.py [--repeats 5] [--models-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import torch

from c123.config import PriorConfig
from c123.provenance import offline_defaults
from c123.priors.stable_diffusion import StableDiffusionPrior
from c123.priors.tiny import write_tiny_models
from c123.priors.zero123 import Zero123Prior


def cams(batch: int, device) -> SimpleNamespace:
    """Novel views 60 degrees off the reference, as the priors read them (degrees)."""
    return SimpleNamespace(**{name: torch.full((batch,), value, device=device)
                              for name, value in (("polar", 80.0), ("azimuth", 60.0), ("radius", 3.3))})


def time_step(prior, device, render: int, batch: int, repeats: int) -> list[float]:
    """Seconds per loss() + backward(), after one warm-up step."""
    images = torch.rand(batch, 3, render, render, device=device, requires_grad=True)
    views = cams(batch, device)
    generator = torch.Generator().manual_seed(0)  # the step's draws (posterior noise, t, noise), as the loop passes
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        prior.loss(images, views, t_range=(0.2, 0.6), generator=generator).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
        images.grad = None
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--render", type=int, default=128, help="render size fed to the priors")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models-dir", default=None, help="tiny models folder (default: a temporary one)")
    parser.add_argument("--precision", default="fp16", choices=["fp16", "fp32"], help="prior.precision (CUDA only)")
    args = parser.parse_args()
    offline_defaults()
    dirs = write_tiny_models(args.models_dir or tempfile.mkdtemp(prefix="c123-bench-"))
    cfg = PriorConfig(zero123_size=256, sd_size=512, precision=args.precision)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, render {args.render}px, "
          f"batch {args.batch}, median of {args.repeats}, precision {args.precision} (CUDA only)")
    for device in devices:
        zero123 = Zero123Prior.from_pretrained(dirs["zero123"], cfg, device)
        zero123.set_reference(torch.rand(1, 3, 256, 256, device=device), cams(1, device))
        sd = StableDiffusionPrior.from_pretrained(dirs["stable_diffusion"], cfg, device)
        sd.set_prompt("a chair")
        for name, prior, size in (("zero123 (tiny)", zero123, cfg.zero123_size),
                                  ("stable-diffusion (tiny)", sd, cfg.sd_size)):
            times = time_step(prior, device, args.render, args.batch, args.repeats)
            print(f"{device.type:5s} {name:24s} input {size}x{size} (latent {size // 8}x{size // 8}): "
                  f"{1000 * statistics.median(times):8.1f} ms/step (min {1000 * min(times):.1f}), "
                  f"weights {prior.variant_loaded} {prior.unet.dtype}, autocast {prior.use_autocast}")


if __name__ == "__main__":
    main()
