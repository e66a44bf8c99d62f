"""Tiny random-weight models in the real repositories' on-disk layouts: the priors (Zero-1-to-3, Stable
Zero123, Stable Diffusion, CLIP) and the photo preprocessors (CLIPSeg background remover, DPT depth, BLIP-2 captioner).

They load through exactly the `from_pretrained` paths of the real models (offline), so the whole method
runs on CPU in seconds; their outputs are meaningless. Layouts written:
  zero123/           model_index.json, unet/ (8 input channels), vae/, image_encoder/, feature_extractor/,
                     clip_camera_projection/ (config.json + diffusion_pytorch_model.safetensors), scheduler/
                     (as bennyguo/zero123-xl-diffusers); each weights folder also holds the fp16_ema variant
                     (*.fp16_ema.safetensors), whose UNet differs from the unsuffixed one as an EMA would
  stable-zero123/    the same parts as zero123/ with one unsuffixed weights file each (as
                     ashawkey/stable-zero123-diffusers), its own random weights (seed + 1); the tiny preset keeps
                     Zero-1-to-3: set prior.zero123_family=stable-zero123 and prior.zero123_model=DIR/stable-zero123
  stable-diffusion/  model_index.json, unet/, vae/, text_encoder/, tokenizer/ (vocab.json, merges.txt),
                     scheduler/ (as stabilityai/stable-diffusion-2-1-base)
  clip/              config.json, model.safetensors, vocab.json, merges.txt, tokenizer_config.json,
                     preprocessor_config.json (as openai/clip-vit-base-patch16)
  clipseg/           the same files for CLIPSegForImageSegmentation (as CIDAS/clipseg-rd64-refined)
  dpt/               config.json, model.safetensors, preprocessor_config.json (DPTForDepthEstimation, as
                     Intel/dpt-hybrid-midas but with a plain ViT backbone)
  blip2/             config.json, model.safetensors, generation_config.json, the OPT tokenizer (GPT-2 byte-level
                     BPE) and the processor files (as Salesforce/blip2-opt-2.7b); only printable ASCII has
                     non-zero embeddings, so greedy captions are never empty (random characters)
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import (Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor,
                          CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPSegConfig, CLIPSegForImageSegmentation,
                          CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection, DPTConfig,
                          DPTForDepthEstimation, DPTImageProcessor, GPT2Tokenizer, ViTImageProcessor)

from c123.priors.zero123 import CLIPCameraProjection

NAMES = {"zero123": "zero123", "stable_zero123": "stable-zero123", "stable_diffusion": "stable-diffusion",
         "clip": "clip", "background": "clipseg", "depth": "dpt", "caption": "blip2"}
SEED_OFFSETS = {"stable_zero123": 1}
"""A role written from seed + offset (0 when absent): Stable Zero123's twin is not Zero-1-to-3's."""
MARKER = "c123-tiny.json"
"""Written last inside each model folder; a folder without it (or of another LAYOUT) is rewritten."""
LAYOUT = 2
"""Version of the folder layout: 2 added the fp16_ema weights of Zero-1-to-3."""

DIM = 32  # width of every tiny network and of the embeddings they exchange
IMAGE_SIZE = 32
# the betas of SD 2.1-base and of zero123-xl (scaled_linear 0.00085 .. 0.012 over 1000 steps)
BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
SPECIAL = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
           "pad_token": "<|endoftext|>"}


def ensure_tiny_models(cfg) -> None:
    """Write the tiny models a config of a tiny-model preset points at (beside its Zero-1-to-3), when missing;
    nothing for other presets, whose weights are the real ones."""
    from c123.config import TINY_MODEL_PRESETS

    if cfg.preset in TINY_MODEL_PRESETS:
        write_tiny_models(Path(cfg.prior.zero123_model).expanduser().parent)


def write_tiny_models(out_dir, seed: int = 0) -> dict[str, str]:
    """Write (or reuse) the tiny models under `out_dir`; returns their folders by role."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    writers = {"zero123": _write_zero123, "stable_zero123": _write_stable_zero123,
               "stable_diffusion": _write_stable_diffusion, "clip": _write_clip, "background": _write_clipseg,
               "depth": _write_dpt, "caption": _write_blip2}
    for role, write in writers.items():
        target = out / NAMES[role]
        if _complete(target):
            continue
        tmp = Path(tempfile.mkdtemp(dir=out, prefix=f".{NAMES[role]}-"))
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + SEED_OFFSETS.get(role, 0))
                write(tmp)
            (tmp / MARKER).write_text(json.dumps({"seed": seed, "diffusers": diffusers.__version__,
                                                  "layout": LAYOUT}))
            if target.exists() and not _complete(target):  # incomplete, older or foreign: replace it
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.rename(tmp, target)
            except OSError:  # another process finished first
                if not _complete(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return {role: str(out / name) for role, name in NAMES.items()}


def _complete(folder: Path) -> bool:
    """A finished folder of the current layout."""
    try:
        return json.loads((folder / MARKER).read_text()).get("layout") == LAYOUT
    except (OSError, ValueError):
        return False


def _save_with_ema(model, path: Path, ema_offset: float = 0.0) -> None:
    """Save `model` unsuffixed and as the fp16_ema variant, the EMA copy shifted by `ema_offset` x a random
    tensor per parameter (so a test can tell which file was loaded). The variant is written first: a
    transformers config records the dtype of the last save."""
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for param in ema.parameters():
            param.add_(ema_offset * torch.randn_like(param))
    ema.half().save_pretrained(path, variant="fp16_ema")
    model.save_pretrained(path)


def _model_index(path: Path, class_name: str, components: dict) -> None:
    index = {"_class_name": class_name, "_diffusers_version": diffusers.__version__,
             "requires_safety_checker": False, "safety_checker": [None, None], **components}
    (path / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True))


def _unet(in_channels: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 8, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(DIM, 2 * DIM), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=DIM, attention_head_dim=(2, 4),
        use_linear_projection=True, norm_num_groups=8)


def _vae() -> AutoencoderKL:
    # four blocks like the real VAE, so latents are 1/8 of the image as in the real models
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=IMAGE_SIZE)


def _vision_config() -> dict:
    return dict(image_size=IMAGE_SIZE, patch_size=8, hidden_size=DIM, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, projection_dim=DIM)


def _text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=DIM, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=77, projection_dim=DIM,
                bos_token_id=0, eos_token_id=1, pad_token_id=1)


def _processor() -> CLIPImageProcessor:
    crop = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=crop)


def _write_tokenizer(path: Path) -> int:
    """A byte-level BPE vocabulary (all 256 byte symbols, word-final forms, a few merges) as vocab.json +
    merges.txt, the files CLIPTokenizer reads in the real repositories; returns the vocabulary size."""
    path.mkdir(parents=True, exist_ok=True)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("v", "i"), ("vi", "e"), ("vie", "w</w>"), ("s", "i"), ("si", "d"), ("sid", "e</w>")]
    tokens = [SPECIAL["bos_token"], SPECIAL["eos_token"], *symbols, *(s + "</w>" for s in symbols),
              *(a + b for a, b in merges)]
    (path / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (path / "special_tokens_map.json").write_text(json.dumps(SPECIAL))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, **SPECIAL}))
    return len(tokens)


def _write_zero123(path: Path) -> None:
    # only the UNet is averaged in Zero-1-to-3's training (ldm LatentDiffusion keeps model_ema of its UNet)
    _save_with_ema(_unet(in_channels=8), path / "unet", ema_offset=0.02)
    _save_with_ema(_vae(), path / "vae")
    _save_with_ema(CLIPVisionModelWithProjection(CLIPVisionConfig(**_vision_config())), path / "image_encoder")
    _processor().save_pretrained(path / "feature_extractor")
    _save_with_ema(CLIPCameraProjection(embedding_dim=DIM, additional_embeddings=4), path / "clip_camera_projection")
    DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(
        path / "scheduler")
    _zero123_index(path)


def _zero123_index(path: Path) -> None:
    """model_index.json of a Zero123Pipeline (zero123-xl-diffusers and stable-zero123-diffusers alike)."""
    _model_index(path, "Zero123Pipeline", {
        "clip_camera_projection": ["zero123", "CLIPCameraProjection"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
        "scheduler": ["diffusers", "DDIMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]})


def _write_stable_zero123(path: Path) -> None:
    # ashawkey/stable-zero123-diffusers: the Zero123Pipeline parts, one unsuffixed safetensors per part
    _unet(in_channels=8).save_pretrained(path / "unet")
    _vae().save_pretrained(path / "vae")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**_vision_config())).save_pretrained(path / "image_encoder")
    _processor().save_pretrained(path / "feature_extractor")
    CLIPCameraProjection(embedding_dim=DIM, additional_embeddings=4).save_pretrained(path / "clip_camera_projection")
    DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1).save_pretrained(
        path / "scheduler")
    _zero123_index(path)


def _write_stable_diffusion(path: Path) -> None:
    vocab_size = _write_tokenizer(path / "tokenizer")
    _unet(in_channels=4).save_pretrained(path / "unet")
    _vae().save_pretrained(path / "vae")
    CLIPTextModel(CLIPTextConfig(**_text_config(vocab_size))).save_pretrained(path / "text_encoder")
    PNDMScheduler(**BETAS, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1).save_pretrained(
        path / "scheduler")
    _model_index(path, "StableDiffusionPipeline", {
        "feature_extractor": [None, None], "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})


def _write_clip(path: Path) -> None:
    vocab_size = _write_tokenizer(path)
    config = CLIPConfig(text_config=_text_config(vocab_size), vision_config=_vision_config(), projection_dim=DIM)
    CLIPModel(config).save_pretrained(path)
    _processor().save_pretrained(path)


def _write_clipseg(path: Path) -> None:
    vocab_size = _write_tokenizer(path)
    config = CLIPSegConfig(text_config=_text_config(vocab_size), vision_config={**_vision_config(), "num_hidden_layers": 3},
                           projection_dim=DIM, extract_layers=[1, 2], reduce_dim=16, decoder_intermediate_size=37)
    CLIPSegForImageSegmentation(config).save_pretrained(path)
    # CLIPSeg's processor: a plain resize to the model's square input with ImageNet statistics
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.485, 0.456, 0.406],
                      image_std=[0.229, 0.224, 0.225]).save_pretrained(path)


def _write_dpt(path: Path) -> None:
    config = DPTConfig(hidden_size=DIM, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                       image_size=IMAGE_SIZE, patch_size=8, backbone_out_indices=[0, 1, 2, 3],
                       neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5])
    DPTForDepthEstimation(config).save_pretrained(path)
    DPTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, keep_aspect_ratio=False).save_pretrained(path)


def _write_blip2(path: Path) -> None:
    # OPT's tokenizer: GPT-2 byte-level BPE with <s> <pad> </s> <unk> first (</s> is OPT's bos and eos)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=[], bos_token="</s>", eos_token="</s>", unk_token="<unk>",
                              pad_token="<pad>")
    queries = 4
    processor = Blip2Processor(BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}), tokenizer,
                               num_query_tokens=queries)  # adds the <image> token
    eos = vocab["</s>"]
    config = Blip2Config(
        vision_config={**_vision_config(), "intermediate_size": 37}, num_query_tokens=queries,
        qformer_config=dict(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                            encoder_hidden_size=DIM),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=DIM, word_embed_proj_dim=DIM,
                         num_hidden_layers=2, ffn_dim=37, num_attention_heads=4, max_position_embeddings=64,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=vocab["<pad>"]),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    model = Blip2ForConditionalGeneration(config)
    # tied input/output embeddings: a zero row has logit 0, below the best of the random rows, so greedy
    # decoding never ends at once (</s>) and writes printable ASCII only
    readable = [i for tok, i in vocab.items() if tok == "Ġ" or (len(tok) == 1 and "!" <= tok <= "~")]
    with torch.no_grad():
        weight = model.get_input_embeddings().weight
        keep = torch.zeros(len(weight), dtype=torch.bool)
        keep[readable] = True
        weight[~keep] = 0
    model.save_pretrained(path)
    processor.save_pretrained(path)
