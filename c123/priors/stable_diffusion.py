"""Stable Diffusion 2.1-base as the 2D prior: SDS with a view-dependent text prompt.

Loads the diffusers layout of `stabilityai/stable-diffusion-2-1-base`: unet/, vae/, text_encoder/
(CLIPTextModel), tokenizer/ (CLIPTokenizer: vocab.json + merges.txt) and scheduler/ (for alpha_bar).

Every step follows the official guidance/sd_utils.py `train_step` and the text embeddings of
nerf/utils.py `train_step` (lyk412/Consistent123): fp16 weights with -O, the empty negative prompt as the
unconditional branch, [uncond; cond] batches, t uniform in t_range, latents from the posterior sample,
w(t) = 1 - alpha_bar(t), grad_scale 1.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from c123.config import PriorConfig
from c123.config_checks import check_section
from c123.errors import InputError
from c123.priors import sds
from c123.priors.weights import autocast, load_frozen, runtime_dtypes, summarize_variants

VIEWS = ("front", "side", "back")
FRONT_HALF_ANGLE = 30.0
"""'bucket' mode: front when |delta azimuth| < 30 deg, back when >= 180 - 30, side otherwise:
stable-dreamfusion's `get_view_direction` with its default angle_front = 60 (the width of the front and of
the back sector). Its overhead/bottom views (polar <= 30 or >= 150) never occur in our polar range (45..105)."""


def delta_azimuth(azimuth: torch.Tensor, ref_azimuth: float) -> torch.Tensor:
    """Azimuth relative to the reference, wrapped to [-180, 180) degrees (the provider's delta azimuth)."""
    return torch.remainder(azimuth - ref_azimuth + 180.0, 360.0) - 180.0


def view_index(azimuth: torch.Tensor) -> torch.Tensor:
    """0 front, 1 side, 2 back for each (delta) azimuth in degrees, any range ('bucket' mode)."""
    a = delta_azimuth(azimuth, 0.0).abs()
    index = torch.where(a < FRONT_HALF_ANGLE, 0, 1)
    return torch.where(a >= 180.0 - FRONT_HALF_ANGLE, 2, index)  # selected on the device: no host sync


def view_mix(azimuth: torch.Tensor) -> torch.Tensor:
    """Weights [B,3] of the front/side/back embeddings ('interpolate' mode, nerf/utils.py train_step):
    r = 1 - |a|/90 mixes front and side over 0..90 deg, r = 1 - (|a| - 90)/90 side and back over 90..180."""
    a = delta_azimuth(azimuth.float(), 0.0).abs()
    near = a < 90.0
    r = torch.where(near, 1.0 - a / 90.0, 1.0 - (a - 90.0) / 90.0)
    zero = torch.zeros_like(r)
    front = torch.where(near, r, zero)
    side = torch.where(near, 1.0 - r, r)
    back = torch.where(near, zero, 1.0 - r)
    return torch.stack([front, side, back], dim=-1)


class StableDiffusionPrior:
    """SDS with Stable Diffusion: `set_prompt` once, then `loss(images, cams, t_range=...)` per step."""

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, cfg: PriorConfig, device,
                 variants: dict[str, str] | None = None):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.cfg, self.device = cfg, torch.device(device)
        check_section(cfg, "prior")  # a prior built without c123.config_checks.validate is checked the same way
        _, self.use_autocast = runtime_dtypes(cfg.precision, self.device, half_weights=True)
        self.variants = variants or {}
        self.variant_loaded = summarize_variants(self.variants) if self.variants else "unknown"
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.view_embeds = self.negative_embeds = None
        self.prompt = ""
        self.prompt_cut: str | None = None
        """Why the prompt does not fit the text encoder (a warning), None when it does."""
        self.ref_azimuth = 0.0
        self.last_t = self.last_grad = self.last_grad_norm = None

    @classmethod
    def from_pretrained(cls, path: str, cfg: PriorConfig, device) -> StableDiffusionPrior:
        """Load every part from a stable-diffusion-2-1-base folder, in float16 on CUDA with precision 'fp16'
        (the official StableDiffusionPipeline.from_pretrained(torch_dtype=float16)), else float32."""
        check_section(cfg, "prior")  # before any weights load
        dtype, _ = runtime_dtypes(cfg.precision, device, half_weights=True)
        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
        parts, variants = {}, {}
        for name, model_cls in classes.items():
            parts[name], variants[name] = load_frozen(model_cls, path, name, dtype, device)
        tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(parts["unet"], parts["vae"], parts["text_encoder"], tokenizer, scheduler, cfg, device, variants)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Per-token text embeddings [N, L, D] in float32 (padded to the tokenizer's max length)."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].float()

    def set_prompt(self, text: str, ref_azimuth: float = 0.0) -> None:
        """Embed "<text>, front/side/back view" and the empty negative prompt; views are named by their
        azimuth relative to `ref_azimuth` (the official provider's delta azimuth)."""
        if not text or not text.strip():
            raise InputError("empty prompt: Stable Diffusion needs a text prompt; pass --prompt")
        self.prompt = text.strip()
        texts = [f"{self.prompt}, {view} view" for view in VIEWS]
        tokens, limit = max(len(ids) for ids in self.tokenizer(texts, verbose=False).input_ids), self.tokenizer.model_max_length
        self.prompt_cut = None if tokens <= limit else (
            f"the prompt is {tokens} tokens with its view word (', back view'); Stable Diffusion reads {limit}, so the "
            "rest, view word included, is cut and every view gets the same prompt: shorten the prompt")
        self.view_embeds = self.encode_text(texts)
        self.negative_embeds = self.encode_text([""])
        self.ref_azimuth = float(ref_azimuth)

    def text_embeddings(self, cams) -> torch.Tensor:
        """The conditional embedding [B, L, D] of each view (per `cfg.sd_view_prompt`)."""
        azimuth = delta_azimuth(cams.azimuth.to(self.device, torch.float32), self.ref_azimuth)
        if self.cfg.sd_view_prompt == "bucket":
            return self.view_embeds[view_index(azimuth)]
        return torch.einsum("bv,vld->bld", view_mix(azimuth), self.view_embeds)

    def loss(self, images: torch.Tensor, cams, *, t_range, step_ratio=None, guidance_scale=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss of renders [B,3,H,W] in [0,1]; the prompt embedding of each view follows its azimuth.

        t is uniform in t_range (no annealing), so `step_ratio` is accepted for the shared prior interface
        only. The random draws come from `generator` in the order of `sds.draw`. The last t, latent
        gradient and its norm are kept in `last_t`, `last_grad`, `last_grad_norm`.
        """
        if self.view_embeds is None:
            raise RuntimeError("StableDiffusionPrior.loss called before set_prompt")
        batch = images.shape[0]
        scale = self.cfg.guidance_scale_2d if guidance_scale is None else guidance_scale
        with autocast(self.use_autocast, self.device):
            step = sds.draw(self.vae, sds.resize(images, self.cfg.sd_size), latent_mode=self.cfg.render_latents,
                            t_range=t_range, timestep_mode="uniform", num_train_timesteps=self.num_train_timesteps,
                            alphas_cumprod=self.alphas_cumprod, generator=generator, device=self.device)
            with torch.no_grad():
                context = torch.cat([self.negative_embeds.expand(batch, -1, -1), self.text_embeddings(cams)])
                x_in = torch.cat([step.noisy, step.noisy]).to(self.unet.dtype)
                pred = self.unet(x_in, torch.cat([step.t, step.t]),
                                 encoder_hidden_states=context.to(self.unet.dtype)).sample
        with torch.no_grad():
            grad = torch.nan_to_num(sds.guided_grad(pred, step, self.alphas_cumprod, self.prediction_type, scale))
        self.last_t, self.last_grad, self.last_grad_norm = step.t, grad, grad.norm()
        return sds.sds_loss(step.latents, grad)
