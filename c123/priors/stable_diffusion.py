"""Stable Diffusion 2.1-base as the 2D prior: SDS with a view-dependent text prompt.

Loads the diffusers layout of `stabilityai/stable-diffusion-2-1-base`: unet/, vae/, text_encoder/
(CLIPTextModel), tokenizer/ (CLIPTokenizer: vocab.json + merges.txt) and scheduler/ (for alpha_bar).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from c123.config import PriorConfig
from c123.errors import InputError
from c123.priors import sds
from c123.priors.weights import load_frozen

VIEWS = ("front", "side", "back")
FRONT_HALF_ANGLE = 30.0
"""Front when |azimuth| < 30 deg, back when |azimuth| >= 180 - 30, side otherwise: stable-dreamfusion's
`get_view_direction` with its default angle_front = 60 (the width of the front and of the back sector).
Its overhead/bottom views (polar <= 30 or >= 150) never occur in our polar range (45..105) and are left out."""


def view_index(azimuth: torch.Tensor) -> torch.Tensor:
    """0 front, 1 side, 2 back for each azimuth (degrees, any range)."""
    a = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    index = torch.ones_like(a, dtype=torch.long)
    index[a.abs() < FRONT_HALF_ANGLE] = 0
    index[a.abs() >= 180.0 - FRONT_HALF_ANGLE] = 2
    return index


class StableDiffusionPrior:
    """SDS with Stable Diffusion: `set_prompt` once, then `loss(images, cams, t_range=...)` per step."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, cfg: PriorConfig, device):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.cfg, self.device, self.dtype = cfg, torch.device(device), unet.dtype
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.view_embeds = self.negative_embeds = None
        self.last_t = self.last_grad_norm = None

    @classmethod
    def from_pretrained(cls, path: str, cfg: PriorConfig, device) -> StableDiffusionPrior:
        """Load every part from a stable-diffusion-2-1-base folder (see the module docstring)."""
        def load(model_cls, sub):
            return load_frozen(model_cls, path, sub, cfg.dtype, device)

        unet, vae, text_encoder = (load(UNet2DConditionModel, "unet"), load(AutoencoderKL, "vae"),
                                   load(CLIPTextModel, "text_encoder"))
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(unet, vae, text_encoder, tokenizer, scheduler, cfg, device)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Per-token text embeddings [N, L, D] (padded to the tokenizer's max length)."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def set_prompt(self, text: str) -> None:
        """Embed "<text>, front/side/back view" and the empty negative prompt."""
        if not text or not text.strip():
            raise InputError("empty prompt: Stable Diffusion needs a text prompt; pass --prompt")
        self.view_embeds = self.encode_text([f"{text.strip()}, {view} view" for view in VIEWS])
        self.negative_embeds = self.encode_text([""])

    def loss(self, images: torch.Tensor, cams, *, t_range, step_ratio=None, guidance_scale=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss of renders [B,3,H,W] in [0,1]; the prompt of each view is picked by its azimuth.

        t is uniform in t_range (METHOD.md section 2; no annealing), so `step_ratio` is accepted for the
        shared prior interface only. The last t and
        gradient norm are kept in `last_t`, `last_grad_norm`.
        """
        if self.view_embeds is None:
            raise RuntimeError("StableDiffusionPrior.loss called before set_prompt")
        batch = images.shape[0]
        scale = self.cfg.guidance_scale_2d if guidance_scale is None else guidance_scale
        latents = sds.encode_latents(self.vae, sds.resize(images, self.cfg.sd_size))
        t, noise, noisy = sds.diffuse(latents, t_range, self.num_train_timesteps, self.alphas_cumprod, generator,
                                      self.device)
        with torch.no_grad():
            cond = self.view_embeds[view_index(cams.azimuth).to(self.device)]
            context = torch.cat([cond, self.negative_embeds.expand(batch, -1, -1)])
            x_in = torch.cat([noisy, noisy])
            pred = self.unet(x_in.to(self.dtype), torch.cat([t, t]), encoder_hidden_states=context).sample.float()
            grad = sds.guided_grad(pred, noisy, noise, t, self.alphas_cumprod, self.prediction_type, scale)
            grad = torch.nan_to_num(grad)
        self.last_t, self.last_grad_norm = t, grad.norm()
        return sds.sds_loss(latents, grad)
