"""CLIP image/text embeddings for the boundary detector (METHOD.md section 4) and the CLIP-similarity metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from c123.priors.weights import variant


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

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [0,1] -> normalised pixel values [B,3,crop,crop]."""
        h, w = images.shape[-2:]
        scale = self.size / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        x = F.interpolate(images.float(), size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean.to(x.device)) / self.std.to(x.device)


class ClipModel:
    """A transformers CLIPModel with its tokenizer and image normalisation; embeddings are unit-norm."""

    def __init__(self, model: CLIPModel, tokenizer: CLIPTokenizer, normalize: ClipNormalize, device):
        self.model, self.tokenizer, self.normalize, self.device = model, tokenizer, normalize, torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str, device) -> ClipModel:
        """Load the model, tokenizer and preprocessor config from an openai/clip-vit-* style folder."""
        model = CLIPModel.from_pretrained(path, variant=variant(path, "."), dtype=torch.float32)
        model = model.to(device).eval().requires_grad_(False)
        normalize = ClipNormalize.from_processor(CLIPImageProcessor.from_pretrained(path))
        return cls(model, CLIPTokenizer.from_pretrained(path), normalize, device)

    def image_embeds(self, images: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings [B,D] of images [B,3,H,W] in [0,1]."""
        pixels = self.normalize(images.to(self.device))
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def text_embeds(self, texts: list[str]) -> torch.Tensor:
        """Unit text embeddings [N,D]."""
        tokens = self.tokenizer(list(texts), padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings)
        out = self.model.text_model(input_ids=tokens.input_ids.to(self.device),
                                    attention_mask=tokens.attention_mask.to(self.device))
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1)

    def similarity(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Cosine similarities [B,N] between images and texts."""
        return self.image_embeds(images) @ self.text_embeds(texts).T
