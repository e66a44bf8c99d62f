"""Zero-1-to-3 (XL) as the 3D prior: SDS on novel views, conditioned on the reference image and camera.

Loads the diffusers layout of `bennyguo/zero123-xl-diffusers`: unet/ (8 input channels: the noisy latent
and the reference latent), vae/, image_encoder/ (CLIPVisionModelWithProjection), feature_extractor/
(CLIPImageProcessor: its mean/std/size are used), clip_camera_projection/ (the 772 -> 768 Linear,
`CLIPCameraProjection` with weights `proj.weight`/`proj.bias`) and scheduler/ (for alpha_bar).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from c123.config import PriorConfig
from c123.priors import sds
from c123.priors.clip import ClipNormalize
from c123.priors.weights import load_frozen

AZIMUTH_SIGN = 1.0
"""Zero-1-to-3's delta azimuth is +(target - reference) in our convention: in both, a positive delta moves
the camera to its own right around the object (azimuth grows from +z towards +x, +y up). stable-dreamfusion
(and the Consistent123 code) negate it (METHOD.md section 3); the oracle prior's tests pin our sign."""


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


def view_angle(cams, ref_cams) -> torch.Tensor:
    """Great-circle angle [B] (degrees) between each camera direction and the reference direction."""
    def direction(c):
        theta, phi = torch.deg2rad(c.polar.double()), torch.deg2rad(c.azimuth.double())
        return torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], dim=-1)

    cos = (direction(cams) * direction(ref_cams).to(cams.polar.device)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)).to(cams.polar.dtype)


class Zero123Prior:
    """SDS with Zero-1-to-3: `set_reference` once, then `loss(images, cams, t_range=...)` per step."""

    def __init__(self, unet, vae, image_encoder, projection, normalize, scheduler, cfg: PriorConfig, device):
        self.unet, self.vae, self.image_encoder, self.projection = unet, vae, image_encoder, projection
        self.normalize, self.cfg, self.device = normalize, cfg, torch.device(device)
        self.dtype = unet.dtype
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.clip_emb = self.ref_latent = self.ref_cams = None
        self.last_t = self.last_grad_norm = None

    @classmethod
    def from_pretrained(cls, path: str, cfg: PriorConfig, device) -> Zero123Prior:
        """Load every part from a zero123-xl-diffusers folder (see the module docstring)."""
        def load(model_cls, sub):
            return load_frozen(model_cls, path, sub, cfg.dtype, device)

        unet = load(UNet2DConditionModel, "unet")
        vae = load(AutoencoderKL, "vae")
        image_encoder = load(CLIPVisionModelWithProjection, "image_encoder")
        projection = load(CLIPCameraProjection, "clip_camera_projection")
        processor = CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor")
        normalize = ClipNormalize.from_processor(processor)
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        return cls(unet, vae, image_encoder, projection, normalize, scheduler, cfg, device)

    @torch.no_grad()
    def set_reference(self, rgb_white: torch.Tensor, ref_cams) -> None:
        """Cache the CLIP embedding and the VAE latent of the reference [1,3,H,W] in [0,1] on white."""
        image = sds.resize(rgb_white.to(self.device, torch.float32), self.cfg.zero123_size)
        pixels = self.normalize(image).to(self.dtype)
        self.clip_emb = self.image_encoder(pixel_values=pixels).image_embeds.float()
        # Zero-1-to-3 was trained with the *unscaled* posterior mode as its concatenated latent
        self.ref_latent = sds.encode_latents(self.vae, image, scaled=False)
        self.ref_cams = ref_cams

    def loss(self, images: torch.Tensor, cams, *, t_range, step_ratio=None, guidance_scale=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss of renders [B,3,H,W] in [0,1] seen from `cams`; its image gradient is the SDS gradient.

        t is uniform in t_range (METHOD.md section 2; no annealing), so `step_ratio` is accepted for the
        shared prior interface only. The last t and gradient norm are kept in `last_t`, `last_grad_norm`.
        """
        if self.clip_emb is None:
            raise RuntimeError("Zero123Prior.loss called before set_reference")
        batch = images.shape[0]
        scale = self.cfg.guidance_scale_3d if guidance_scale is None else guidance_scale
        latents = sds.encode_latents(self.vae, sds.resize(images, self.cfg.zero123_size))
        t, noise, noisy = sds.diffuse(latents, t_range, self.num_train_timesteps, self.alphas_cumprod, generator,
                                      self.device)
        with torch.no_grad():
            cam = camera_vector(cams, self.ref_cams).to(self.device, torch.float32)
            emb = self.projection(torch.cat([self.clip_emb.expand(batch, -1), cam], -1).to(self.dtype))[:, None]
            ref = self.ref_latent.expand(batch, -1, -1, -1)
            # unconditional branch: zero embedding *and* zero reference latent, as Zero-1-to-3 trains it
            x_in = torch.cat([torch.cat([noisy, ref], 1), torch.cat([noisy, torch.zeros_like(ref)], 1)])
            context = torch.cat([emb, torch.zeros_like(emb)])
            pred = self.unet(x_in.to(self.dtype), torch.cat([t, t]), encoder_hidden_states=context).sample.float()
            grad = sds.guided_grad(pred, noisy, noise, t, self.alphas_cumprod, self.prediction_type, scale)
            if self.cfg.angle_scaled_gradient:
                angle = view_angle(cams, self.ref_cams).to(self.device, torch.float32)
                grad = grad * (angle / 180.0).view(-1, 1, 1, 1)
            grad = torch.nan_to_num(grad)
        self.last_t, self.last_grad_norm = t, grad.norm()
        return sds.sds_loss(latents, grad)
