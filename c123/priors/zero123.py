"""Zero-1-to-3 (XL) as the 3D prior: SDS on novel views, conditioned on the reference image and camera.

Loads the diffusers layout of `bennyguo/zero123-xl-diffusers`: unet/ (8 input channels: the noisy latent
and the reference latent), vae/, image_encoder/ (CLIPVisionModelWithProjection), feature_extractor/
(CLIPImageProcessor: its mean/std are used), clip_camera_projection/ (the 772 -> 768 Linear,
`CLIPCameraProjection` with weights `proj.weight`/`proj.bias`) and scheduler/ (for alpha_bar).

Every step follows the official guidance/zero123_utils.py (lyk412/Consistent123): EMA weights
(`load_model_from_config` copies model_ema into the model), fp32 weights under fp16 autocast with -O,
t = max_step, render latents from the posterior sample, [uncond; cond] with a zero image embedding *and* a
zero reference latent for the unconditional branch, w(t) = 1 - alpha_bar(t), and the gradient scaled by
the angle to the reference / 180.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from c123.cameras import view_angle
from c123.config import PriorConfig
from c123.config_checks import check_section
from c123.priors import sds
from c123.priors.weights import autocast, load_frozen, runtime_dtypes, summarize_variants

AZIMUTH_SIGN = 1.0
"""Zero-1-to-3's delta azimuth is +(target - reference) in our convention: in both, a positive delta moves
the camera to its own right around the object (azimuth grows from +z towards +x, +y up). The official
provider (nerf/provider.py) builds a mirrored camera frame (right = forward x up), so its renders of an
object are ours of the mirrored object seen from the negated azimuth; zero123_utils.py's sin(-a) undoes
that. tests/test_reference_sds.py pins the mapping, and fails with the sign flipped."""
COMPONENTS = ("unet", "vae", "image_encoder", "clip_camera_projection")


class CLIPCameraProjection(ModelMixin, ConfigMixin):
    """The (image embedding ++ camera vector) -> embedding Linear, stored as zero123-xl-diffusers stores it."""

    @register_to_config
    def __init__(self, embedding_dim: int = 768, additional_embeddings: int = 4):
        super().__init__()
        self.proj = nn.Linear(embedding_dim + additional_embeddings, embedding_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.proj(embedding)


def camera_vector(cams, ref_cams) -> torch.Tensor:
    """[B,4] = [d polar (rad), sin d azimuth, cos d azimuth, d radius], deltas = target - reference."""
    like = cams.polar
    d_polar = torch.deg2rad(cams.polar - ref_cams.polar.to(like))
    d_azimuth = torch.deg2rad(AZIMUTH_SIGN * (cams.azimuth - ref_cams.azimuth.to(like)))
    d_radius = cams.radius - ref_cams.radius.to(like)
    return torch.stack([d_polar, torch.sin(d_azimuth), torch.cos(d_azimuth), d_radius], dim=-1)


def weight_preference(variant: str) -> tuple[str | None, ...]:
    """Variant order for loading: the configured one first, then the unsuffixed file, then fp16."""
    first = None if variant == "default" else variant
    return tuple(dict.fromkeys((first, None, "fp16")))


class ReferenceImageEncoder:
    """The official conditioning image preprocessing (ldm FrozenCLIPImageEmbedder.preprocess): a bicubic
    resize to the encoder's input size with align_corners=True and no antialiasing, then CLIP mean/std."""

    def __init__(self, encoder: CLIPVisionModelWithProjection, processor: CLIPImageProcessor):
        self.encoder, self.size = encoder, encoder.config.image_size
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Image embeddings [B,D] (float32) of images [B,3,H,W] in [0,1]."""
        x = F.interpolate(image.float(), (self.size, self.size), mode="bicubic", align_corners=True)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return self.encoder(pixel_values=x.to(self.encoder.dtype)).image_embeds.float()


class Zero123Prior:
    """SDS with Zero-1-to-3: `set_reference` once, then `loss(images, cams, t_range=...)` per step."""

    def __init__(self, unet, vae, image_encoder, projection, processor, scheduler, cfg: PriorConfig, device,
                 variants: dict[str, str] | None = None):
        self.unet, self.vae, self.projection = unet, vae, projection
        self.cfg, self.device = cfg, torch.device(device)
        check_section(cfg, "prior")  # a prior built without c123.config_checks.validate is checked the same way
        self.encode_reference = ReferenceImageEncoder(image_encoder, processor)
        _, self.use_autocast = runtime_dtypes(cfg.precision, self.device, half_weights=False)
        self.variants = variants or {}
        self.variant_loaded = summarize_variants(self.variants) if self.variants else "unknown"
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.clip_emb = self.ref_latent = self.ref_cams = None
        self.last_t = self.last_grad = self.last_grad_norm = None

    @classmethod
    def from_pretrained(cls, path: str, cfg: PriorConfig, device) -> Zero123Prior:
        """Load every part from a zero123-xl-diffusers folder in float32 (the official loads fp32 weights
        and runs them under autocast), each from the `cfg.zero123_variant` weights when present."""
        check_section(cfg, "prior")  # before any weights load
        preference = weight_preference(cfg.zero123_variant)
        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
                   "image_encoder": CLIPVisionModelWithProjection, "clip_camera_projection": CLIPCameraProjection}
        parts, variants = {}, {}
        for name in COMPONENTS:
            parts[name], variants[name] = load_frozen(classes[name], path, name, torch.float32, device, preference)
        processor = CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor")
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(parts["unet"], parts["vae"], parts["image_encoder"], parts["clip_camera_projection"],
                   processor, scheduler, cfg, device, variants)

    @torch.no_grad()
    def set_reference(self, rgb_white: torch.Tensor, ref_cams) -> None:
        """Cache the CLIP embedding and the VAE latent of the reference [1,3,H,W] in [0,1] on white, in
        float32 outside autocast (the official get_img_embeds runs when the trainer is built)."""
        image = sds.resize(rgb_white.to(self.device, torch.float32), self.cfg.zero123_size)
        self.clip_emb = self.encode_reference(image)
        # get_img_embeds: the *unscaled* posterior mode, as Zero-1-to-3 was trained with it as c_concat
        self.ref_latent = sds.posterior(self.vae, image).mode().float()
        self.ref_cams = ref_cams

    def loss(self, images: torch.Tensor, cams, *, t_range, step_ratio=None, guidance_scale=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss of renders [B,3,H,W] in [0,1] seen from `cams`; its image gradient is the SDS gradient.

        t follows `cfg.zero123_timestep` (the official: max of t_range), so `step_ratio` is accepted for
        the shared prior interface only. The random draws come from `generator` in the order of `sds.draw`.
        The last t, latent gradient and its norm are kept in `last_t`, `last_grad`, `last_grad_norm`.
        """
        if self.clip_emb is None:
            raise RuntimeError("Zero123Prior.loss called before set_reference")
        batch = images.shape[0]
        scale = self.cfg.guidance_scale_3d if guidance_scale is None else guidance_scale
        with autocast(self.use_autocast, self.device):
            step = sds.draw(self.vae, sds.resize(images, self.cfg.zero123_size), latent_mode=self.cfg.render_latents,
                            t_range=t_range, timestep_mode=self.cfg.zero123_timestep,
                            num_train_timesteps=self.num_train_timesteps, alphas_cumprod=self.alphas_cumprod,
                            generator=generator, device=self.device)
            with torch.no_grad():
                cam = camera_vector(cams, self.ref_cams).to(self.device, torch.float32)
                emb = self.projection(torch.cat([self.clip_emb.expand(batch, -1), cam], -1))[:, None]
                ref = self.ref_latent.expand(batch, -1, -1, -1)
                # unconditional branch first (the official order): zero embedding *and* zero reference latent
                x_in = torch.cat([torch.cat([step.noisy, torch.zeros_like(ref)], 1), torch.cat([step.noisy, ref], 1)])
                context = torch.cat([torch.zeros_like(emb), emb])
                pred = self.unet(x_in, torch.cat([step.t, step.t]), encoder_hidden_states=context).sample
        with torch.no_grad():
            grad = sds.guided_grad(pred, step, self.alphas_cumprod, self.prediction_type, scale)
            if self.cfg.angle_scaled_gradient:
                angle = view_angle(cams, self.ref_cams).to(self.device, torch.float32)
                grad = grad * (angle / 180.0).view(-1, 1, 1, 1)
            grad = torch.nan_to_num(grad)
        self.last_t, self.last_grad, self.last_grad_norm = step.t, grad, grad.norm()
        return sds.sds_loss(step.latents, grad)
