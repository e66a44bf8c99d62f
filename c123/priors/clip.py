"""CLIP image/text embeddings for the boundary detector (guidance/clip_utils.py) and the CLIP-similarity metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from c123.priors.weights import autocast, load_frozen, runtime_dtypes


class ClipNormalize:
    """CLIPImageProcessor's resize (shortest side), centre crop and mean/std, as differentiable torch ops."""

    def __init__(self, size: int, crop: int, mean, std):
        self.size, self.crop = size, crop
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_processor(cls, processor: CLIPImageProcessor) -> ClipNormalize:
        """Read the sizes and statistics of a saved preprocessor_config.json."""
        size = processor.size.get("shortest_edge") or processor.size["height"]
        crop = processor.crop_size["height"] if processor.do_center_crop else size
        return cls(size, crop, processor.image_mean, processor.image_std)

    def __call__(self, images: torch.Tensor, mode: str = "bicubic") -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> normalised pixel values [B,3,crop,crop] (resized with `mode`)."""
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        x = F.interpolate(images.float(), size=size, mode=mode, align_corners=False, antialias=True)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class ClipModel:
    """A transformers CLIPModel with its tokenizer and image normalisation; embeddings are unit-norm float32."""

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer, normalize: ClipNormalize, device,
                 use_autocast: bool = False, variant_loaded: str = "unknown"):
        self.model, self.tokenizer, self.normalize, self.device = model, tokenizer, normalize, torch.device(device)
        self.use_autocast, self.variant_loaded = use_autocast, variant_loaded

    @classmethod
    def from_pretrained(cls, path: str, device, precision: str = "fp32") -> ClipModel:
        """Load the model, tokenizer and preprocessor config from an openai/clip-vit-* style folder.
        precision 'fp16' runs it in float16 on CUDA, as the detector's `clip.load` does there
        (guidance/clip_utils.py); CPU, and 'fp32', run float32 (the metrics' default)."""
        dtype, use_autocast = runtime_dtypes(precision, device, half_weights=True)
        model, variant = load_frozen(CLIPModel, path, ".", dtype, device)
        normalize = ClipNormalize.from_processor(CLIPImageProcessor.from_pretrained(path))
        return cls(model, CLIPTokenizer.from_pretrained(path), normalize, device, use_autocast, variant)

    def image_embeds(self, images: torch.Tensor, resize: str = "bicubic") -> torch.Tensor:
        """Unit image embeddings [B,D] of images [B,3,H,W] in [0,1]; `resize`: the interpolation to the
        encoder's size (the processor's bicubic; the detector's clip_utils.py uses T.Resize, bilinear)."""
        pixels = self.normalize(images.to(self.device), resize).to(self.model.dtype)
        with autocast(self.use_autocast, self.device):
            pooled = self.model.vision_model(pixel_values=pixels).pooler_output
            embeds = self.model.visual_projection(pooled)
        return F.normalize(embeds.float(), dim=-1)

    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Unit text embeddings [N,D]."""
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings)
        with autocast(self.use_autocast, self.device):
            out = self.model.text_model(input_ids=tokens.input_ids.to(self.device),
                                        attention_mask=tokens.attention_mask.to(self.device))
            embeds = self.model.text_projection(out.pooler_output)
        return F.normalize(embeds.float(), dim=-1)

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarities [B,N] between images and texts."""
        return self.image_embeds(images) @ self.text_embeds(texts).T
