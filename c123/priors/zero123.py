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

`sample` draws the prior's own novel views with Zero-1-to-3's DDIM sampler and classifier-free guidance
(cvlab-columbia/zero123 zero123/gradio_new.py `sample_model` / `main_run`, ldm/models/diffusion/ddim.py).
A subclass with another camera vector (c123/priors/stable_zero123.py) replaces `camera_vector` only.
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
SAMPLE_STEPS = 50
"""DDIM steps of `sample`: gradio_new.py `main_run(ddim_steps=50)` (its app's slider starts at 75)."""
SAMPLE_ETA = 1.0
"""DDIM eta of `sample`: gradio_new.py `main_run(ddim_eta=1.0)` (the app never changes it)."""
SAMPLE_GUIDANCE = 3.0
"""Classifier-free guidance scale of `sample`: gradio_new.py `main_run(scale=3.0)` and its slider's start."""


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
    """SDS with Zero-1-to-3: `set_reference` once, then `loss(images, cams, t_range=...)` per step; `sample(cams)`
    draws its own novel views."""

    view_fovy = 49.1
    """Vertical field of view (degrees) of the views `sample` draws, whatever the cameras say: Zero-1-to-3 was
    trained on Objaverse renders at this field of view (One-2-3-45's elevation estimate uses K with f = 280 px at
    256 px, i.e. 49.1 degrees). The elevation estimate (c123/elevation.py) reads it."""
    licence: str | None = None
    """A line to announce once per run when the weights carry terms a user must know (None: nothing)."""

    def __init__(self, unet, vae, image_encoder, projection, processor, scheduler, cfg: PriorConfig, device,
                 variants: dict[str, str] | None = None):
        self.unet, self.vae, self.projection = unet, vae, projection
        self.cfg, self.device = cfg, torch.device(device)
        check_section(cfg, "prior")  # a prior built without c123.config_checks.validate is checked the same way
        self.encode_reference = ReferenceImageEncoder(image_encoder, processor)
        _, self.use_autocast = runtime_dtypes(cfg.precision, self.device, half_weights=False)
        self.model_id = "unknown"
        """What was loaded (Guidance.model_id): the Hub id or folder `from_pretrained` read."""
        self.variants = variants or {}
        self.variant_loaded = summarize_variants(self.variants) if self.variants else "unknown"
        self.scheduler_config = scheduler.config
        self.num_train_timesteps = scheduler.config.num_train_timesteps
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(self.device, torch.float32)
        self.clip_emb = self.ref_latent = self.ref_cams = None
        self.last_t = self.last_grad = self.last_grad_norm = None

    @classmethod
    def from_pretrained(cls, path: str, cfg: PriorConfig, device, model_id: str | None = None) -> Zero123Prior:
        """Load every part from a zero123-xl-diffusers folder (or a folder of the same layout) in float32 (the
        official loads fp32 weights and runs them under autocast), each from the `cfg.zero123_variant`
        weights when present; `model_id`: what the folder was resolved from (default: the folder)."""
        check_section(cfg, "prior")  # before any weights load
        preference = weight_preference(cfg.zero123_variant)
        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL,
                   "image_encoder": CLIPVisionModelWithProjection, "clip_camera_projection": CLIPCameraProjection}
        parts, variants = {}, {}
        for name in COMPONENTS:
            parts[name], variants[name] = load_frozen(classes[name], path, name, torch.float32, device, preference)
        processor = CLIPImageProcessor.from_pretrained(path, subfolder="feature_extractor")
        scheduler = DDIMScheduler.from_pretrained(path, subfolder="scheduler")
        prior = cls(parts["unet"], parts["vae"], parts["image_encoder"], parts["clip_camera_projection"],
                    processor, scheduler, cfg, device, variants)
        prior.model_id = model_id or str(path)
        return prior

    @torch.no_grad()
    def set_reference(self, rgb_white: torch.Tensor, ref_cams) -> None:
        """Cache the CLIP embedding and the VAE latent of the reference [1,3,H,W] in [0,1] on white, in
        float32 outside autocast (the official get_img_embeds runs when the trainer is built)."""
        image = sds.resize(rgb_white.to(self.device, torch.float32), self.cfg.zero123_size)
        self.clip_emb = self.encode_reference(image)
        # get_img_embeds: the *unscaled* posterior mode, as Zero-1-to-3 was trained with it as c_concat
        self.ref_latent = sds.posterior(self.vae, image).mode().float()
        self.ref_cams = ref_cams

    def camera_vector(self, cams) -> torch.Tensor:
        """[B,4] float32 on the prior's device: what the camera projection reads for `cams` (Zero-1-to-3's
        relative vector, module `camera_vector`); a prior with another convention replaces this method."""
        return camera_vector(cams, self.ref_cams).to(self.device, torch.float32)

    def conditioning(self, cams) -> torch.Tensor:
        """The cross-attention context [B,1,D] of the conditional branch: the projection of the reference's
        CLIP embedding ++ the camera vector (cc_projection)."""
        cam = self.camera_vector(cams)
        return self.projection(torch.cat([self.clip_emb.expand(cam.shape[0], -1), cam], -1))[:, None]

    def predict(self, noisy: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                unconditional: bool = True) -> torch.Tensor:
        """UNet outputs for noisy latents [B,4,h,w] at timesteps t [B]: [uncond; cond] (the official order; the
        unconditional branch has a zero context *and* a zero reference latent), or the conditional branch
        alone when `unconditional` is False."""
        ref = self.ref_latent.expand(noisy.shape[0], -1, -1, -1)
        x_cond = torch.cat([noisy, ref.to(noisy.dtype)], 1)
        if not unconditional:
            return self.unet(x_cond, t, encoder_hidden_states=context).sample
        x_in = torch.cat([torch.cat([noisy, torch.zeros_like(x_cond[:, 4:])], 1), x_cond])
        return self.unet(x_in, torch.cat([t, t]), encoder_hidden_states=torch.cat([torch.zeros_like(context),
                                                                                   context])).sample

    def loss(self, images: torch.Tensor, cams, *, t_range, step_ratio=None, guidance_scale=None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """SDS loss of renders [B,3,H,W] in [0,1] seen from `cams`; its image gradient is the SDS gradient.

        t follows `cfg.zero123_timestep` (the official: max of t_range), so `step_ratio` is accepted for
        the shared prior interface only. The random draws come from `generator` in the order of `sds.draw`.
        The last t, latent gradient and its norm are kept in `last_t`, `last_grad`, `last_grad_norm`.
        """
        if self.clip_emb is None:
            raise RuntimeError(f"{type(self).__name__}.loss called before set_reference")
        scale = self.cfg.guidance_scale_3d if guidance_scale is None else guidance_scale
        with autocast(self.use_autocast, self.device):
            step = sds.draw(self.vae, sds.resize(images, self.cfg.zero123_size), latent_mode=self.cfg.render_latents,
                            t_range=t_range, timestep_mode=self.cfg.zero123_timestep,
                            num_train_timesteps=self.num_train_timesteps, alphas_cumprod=self.alphas_cumprod,
                            generator=generator, device=self.device)
            with torch.no_grad():
                pred = self.predict(step.noisy, step.t, self.conditioning(cams))
        with torch.no_grad():
            grad = sds.guided_grad(pred, step, self.alphas_cumprod, self.prediction_type, scale)
            if self.cfg.angle_scaled_gradient:
                angle = view_angle(cams, self.ref_cams).to(self.device, torch.float32)
                grad = grad * (angle / 180.0).view(-1, 1, 1, 1)
            grad = torch.nan_to_num(grad)
        self.last_t, self.last_grad, self.last_grad_norm = step.t, grad, grad.norm()
        return sds.sds_loss(step.latents, grad)

    def sampling_scheduler(self, steps: int) -> DDIMScheduler:
        """The DDIM schedule of ldm's DDIMSampler ('uniform': t = 1, 1 + 1000/steps, ...; alpha_bar of the step
        after the last = alpha_bar(0); no clipping) as diffusers' DDIMScheduler, on the folder's betas. The two
        coincide when `steps` divides the training steps (otherwise ldm takes ceil(1000 / (1000 // steps)))."""
        if steps < 1:
            raise ValueError(f"sample needs at least one DDIM step, got steps={steps}")
        scheduler = DDIMScheduler.from_config(self.scheduler_config, timestep_spacing="leading", steps_offset=1,
                                              set_alpha_to_one=False, clip_sample=False, thresholding=False)
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    @torch.no_grad()
    def sample(self, cams, *, generator: torch.Generator | None, steps: int = SAMPLE_STEPS,
               guidance_scale: float = SAMPLE_GUIDANCE, eta: float = SAMPLE_ETA) -> torch.Tensor:
        """The prior's own views of the reference object from `cams`: images [B,3,S,S] in [0,1], S = zero123_size.

        Zero-1-to-3's sampling (gradio_new.py `sample_model`): x_T ~ N(0, I) from `generator`, then `steps`
        DDIM steps (eta > 0 draws each step's noise from `generator` after x_T), each with classifier-free
        guidance eps_uncond + scale (eps_cond - eps_uncond) over [uncond; cond] (the zero context and zero
        reference latent of `predict`; scale 1 runs the conditional branch alone, as its `uc = None`), then the
        VAE decode of z / scaling_factor, (x + 1) / 2 clamped. Float32 (main_run's precision='fp32').
        """
        if self.clip_emb is None:
            raise RuntimeError(f"{type(self).__name__}.sample called before set_reference")
        scheduler = self.sampling_scheduler(steps)
        context = self.conditioning(cams)
        batch = context.shape[0]
        guided = guidance_scale != 1.0
        x = sds.randn((batch, *self.ref_latent.shape[1:]), generator, self.device)
        for t in scheduler.timesteps:
            t_batch = torch.full((batch,), int(t), dtype=torch.long, device=self.device)
            pred = self.predict(x, t_batch, context, unconditional=guided).float()
            if guided:
                pred = sds.cfg_combine(*pred.chunk(2), guidance_scale)
            x = scheduler.step(pred, t, x, eta=eta, generator=generator).prev_sample
        images = self.vae.decode(x / self.vae.config.scaling_factor).sample.float()
        return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
