"""A caption for a photo without a prompt: BLIP-2 (transformers), as stable-dreamfusion's preprocess_image.py.

The paper takes the prompt "from either user observations or the output of a caption model" (section 3.3);
stable-dreamfusion's BLIP2 class runs `Salesforce/blip2-opt-2.7b` (float16 on CUDA) on the photo with no
text prompt and greedy decoding of at most 20 new tokens. Brief or ambiguous captions cause the paper's
"over imagination": `c123 preprocess` writes the caption to a file so a user can read and correct it.
"""

from __future__ import annotations

import numpy as np

WHAT = "captioning (BLIP-2)"


def caption_image(rgb: np.ndarray, model: str, max_tokens: int, precision: str = "fp16", device="cpu",
                  cache_dir: str | None = None) -> str:
    """The model's caption of an RGB photo HxWx3, on one line ('' when it says nothing); a Hub id is read from
    the HF cache `cache_dir` (prior.model_cache)."""
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Blip2ForConditionalGeneration

    from c123.priors.weights import load_frozen, resolve, runtime_dtypes

    path = resolve(model, WHAT, cache_dir=cache_dir)
    dtype, _ = runtime_dtypes(precision, device, half_weights=True)  # float16 on CUDA, as the BLIP2 class
    processor = AutoProcessor.from_pretrained(path)
    captioner, _ = load_frozen(Blip2ForConditionalGeneration, path, "", dtype, device)
    inputs = processor(images=Image.fromarray(rgb), return_tensors="pt").to(device, dtype)
    with torch.no_grad():
        tokens = captioner.generate(**inputs, max_new_tokens=max_tokens, do_sample=False)
    text = processor.batch_decode(tokens, skip_special_tokens=True)[0]
    return " ".join("".join(ch for ch in text if ch.isprintable()).split())  # one line for prompts.tsv and shells
