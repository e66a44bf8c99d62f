"""The photo path and concept injection on CUDA (the fp16 paths CPU never takes), with the tiny models.

Checks: BLIP-2 captions in float16 (as stable-dreamfusion's BLIP2), CLIPSeg and DPT run on the GPU, the cached
rerun runs no model; Stable Diffusion loads in float16 (precision fp16, `-O`) and textual inversion trains
the float32 token vector through the half-precision text encoder under autocast, the vector moves, stays
finite, and SD's prompt embedding uses it. Prints timings.

    PYTHONPATH=$PWD python benchmarks/gpu_photo_check.py PHOTO.jpg
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from c123.config import tiny
from c123.preprocess import prepare_input
from c123.priors.concept import initial_vector, learn_or_load
from c123.priors.stable_diffusion import StableDiffusionPrior
from c123.priors.tiny import write_tiny_models


def main(photo: str) -> None:
    assert torch.cuda.is_available(), "no CUDA device"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["C123_CACHE"] = str(Path(tmp) / "cache")
        write_tiny_models(Path(tmp) / "models")
        cfg = tiny(str(Path(tmp) / "models"))
        cfg.train.device, cfg.prior.precision = "cuda", "fp16"

        tic = time.perf_counter()
        inp = prepare_input(photo, cfg=cfg, announce=print)
        cold = time.perf_counter() - tic
        tic = time.perf_counter()
        again = prepare_input(photo, cfg=cfg)
        warm = time.perf_counter() - tic
        assert not inp.preprocessing.cached and again.preprocessing.cached and inp.prompt
        assert np.array_equal(inp.rgba, again.rgba) and inp.depth is not None and np.isfinite(inp.depth).all()
        print(f"preprocessing on CUDA: cold {cold:.2f} s, cached {warm:.3f} s; caption {inp.prompt!r}")

        sd = StableDiffusionPrior.from_pretrained(cfg.prior.sd_model, cfg.prior, "cuda")
        assert sd.unet.dtype == torch.float16 and sd.text_encoder.dtype == torch.float16
        start = initial_vector(sd.tokenizer, sd.text_encoder, cfg.concept.initializer)
        cfg.concept.steps, cfg.concept.batch_size = 50, 16
        tic = time.perf_counter()
        concept = learn_or_load(sd, inp.rgba, cfg.concept, cfg.prior.sd_model, cfg.prior.sd_size, "cuda")
        torch.cuda.synchronize()
        learned = time.perf_counter() - tic
        vector = concept.vector
        assert vector.dtype == torch.float32 and torch.isfinite(vector).all()
        moved = float((vector - start).norm())
        assert moved > 0, "the token vector did not move"
        sd.set_prompt(concept.prompt(inp.prompt))
        assert torch.isfinite(sd.view_embeds).all()
        with_concept = sd.view_embeds.clone()
        sd.text_encoder.get_input_embeddings().vector.data.copy_(start)
        sd.set_prompt(concept.prompt(inp.prompt))
        assert not torch.allclose(sd.view_embeds, with_concept)
        print(f"textual inversion on CUDA fp16: {cfg.concept.steps} steps x batch {cfg.concept.batch_size} in "
              f"{learned:.2f} s; loss {concept.record['loss_first']:.4f} -> {concept.record['loss_last']:.4f}; "
              f"vector moved {moved:.4f}")
    print("gpu photo check: ok")


if __name__ == "__main__":
    main(sys.argv[1])
