"""Independent re-implementations for the tests of the view-conditioned 3D priors (Zero-1-to-3, Stable Zero123):
nothing here imports c123.priors. Each piece is written from its public source:

- `threestudio_vector`: threestudio models/guidance/zero123_guidance.py and stable_zero123_guidance.py `get_cond`
  (threestudio-project/threestudio), in threestudio's own terms: elevation above the equator (z up), azimuth
  from +x to +y (data/uncond.py), so a camera is (90 - our polar, our azimuth, our radius) once
  `threestudio_camera_right` and ours agree that a positive azimuth step moves the camera to its own right;
- `ReferenceModel`: a Zero123Pipeline folder loaded part by part with diffusers/transformers, conditioned as
  ldm's FrozenCLIPImageEmbedder / encode_first_stage (zero123 gradio_new.py `sample_model`), the cc_projection
  Linear applied from its safetensors;
- `ldm_ddim_sample`: ldm/models/diffusion/ddim.py DDIMSampler (make_schedule 'uniform', p_sample_ddim with
  unconditional_guidance_scale) as gradio_new.py `sample_model` calls it, then decode_first_stage.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPVisionModelWithProjection

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def cams(polar, azimuth, radius):
    """Our spherical cameras (degrees), as the priors read them."""
    values = (torch.atleast_1d(torch.as_tensor(v, dtype=torch.float32)) for v in (polar, azimuth, radius))
    return SimpleNamespace(**dict(zip(("polar", "azimuth", "radius"), torch.broadcast_tensors(*values))))


def threestudio_vector(view, ref, *, stable: bool) -> torch.Tensor:
    """get_cond's T [B,4] for our cameras `view` relative to `ref` (threestudio elevation = 90 - our polar)."""
    elevation, cond_elevation = 90.0 - view.polar, 90.0 - ref.polar
    d_azimuth = view.azimuth - ref.azimuth
    fourth = (torch.deg2rad(90.0 - cond_elevation.expand_as(elevation)) if stable
              else view.radius - ref.radius)
    return torch.stack([torch.deg2rad((90.0 - elevation) - (90.0 - cond_elevation)),
                        torch.sin(torch.deg2rad(d_azimuth)), torch.cos(torch.deg2rad(d_azimuth)), fourth], -1)


def dreamgaussian_fourth(ref) -> torch.Tensor:
    """dreamgaussian Zero123.get_cam_embeddings' Stable Zero123 entry: deg2rad(90 + default_elevation), its
    elevation negative above the equator (cam_utils.orbit_camera: y = -r sin(elevation)), i.e. our polar - 90."""
    default_elevation = ref.polar - 90.0
    return torch.deg2rad(90.0 + default_elevation)


def threestudio_camera_right(elevation_deg: float, azimuth_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(camera position, camera right) of data/uncond.py: position d(cos e cos a, cos e sin a, sin e), up +z,
    lookat = normalize(-position), right = normalize(lookat x up)."""
    e, a = torch.deg2rad(torch.tensor(elevation_deg, dtype=torch.float64)), torch.deg2rad(
        torch.tensor(azimuth_deg, dtype=torch.float64))
    position = torch.stack([e.cos() * a.cos(), e.cos() * a.sin(), e.sin()])
    lookat = F.normalize(-position, dim=0)
    right = F.normalize(torch.linalg.cross(lookat, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0)
    return position, right


def alphas_cumprod(folder: Path) -> torch.Tensor:
    """alpha_bar of ldm's scaled_linear schedule from the folder's scheduler config (linear_start/linear_end)."""
    config = json.loads((Path(folder) / "scheduler" / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "scaled_linear"
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"],
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


class ReferenceModel:
    """A Zero123Pipeline folder's parts, float32, loaded without c123 (variant: the weights file suffix)."""

    def __init__(self, folder: Path, variant: str | None):
        folder = Path(folder)
        kw = dict(variant=variant, torch_dtype=torch.float32)
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw).eval()
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).eval()
        self.clip = CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder", variant=variant,
                                                                  dtype=torch.float32).eval()
        suffix = f".{variant}" if variant else ""
        cc = load_file(folder / "clip_camera_projection" / f"diffusion_pytorch_model{suffix}.safetensors")
        self.cc_weight, self.cc_bias = cc["proj.weight"].float(), cc["proj.bias"].float()
        self.alphas = alphas_cumprod(folder)

    @torch.no_grad()
    def get_img_embeds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_crossattn before the projection [1,D] (CLIP of the bicubic, align_corners resize with the OpenAI
        mean/std) and c_concat (the unscaled posterior mode) of an image [1,3,S,S] in [0,1]."""
        size = self.clip.config.image_size
        pixels = F.interpolate(x * 2 - 1, (size, size), mode="bicubic", align_corners=True)
        pixels = ((pixels + 1.0) / 2.0 - CLIP_MEAN) / CLIP_STD
        c = self.clip(pixel_values=pixels).image_embeds.float()
        v = self.vae.encode(x * 2 - 1).latent_dist.mode()
        return c, v

    @torch.no_grad()
    def context(self, c: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
        """cc_projection(cat(c, T)) [B,1,D]."""
        return F.linear(torch.cat([c.repeat(len(T), 1), T], -1), self.cc_weight, self.cc_bias)[:, None]

    @torch.no_grad()
    def guided_eps(self, x: torch.Tensor, t: int, context: torch.Tensor, v: torch.Tensor,
                   scale: float) -> torch.Tensor:
        """p_sample_ddim's e_t: one UNet call on [uncond; cond] (zero c_crossattn after the projection, zero
        c_concat), e_uncond + scale (e_cond - e_uncond)."""
        batch = x.shape[0]
        concat = torch.cat([torch.zeros_like(v).repeat(batch, 1, 1, 1), v.repeat(batch, 1, 1, 1)])
        x_in = torch.cat([torch.cat([x, x]), concat], 1)
        t_in = torch.full((2 * batch,), t, dtype=torch.long)
        e_uncond, e_cond = self.unet(x_in, t_in, encoder_hidden_states=torch.cat([torch.zeros_like(context),
                                                                                  context])).sample.chunk(2)
        return e_uncond + scale * (e_cond - e_uncond)


def ldm_timesteps(steps: int, num_train: int = 1000) -> list[int]:
    """make_ddim_timesteps('uniform'): range(0, num_train, num_train // steps) + 1, ascending."""
    return [t + 1 for t in range(0, num_train, num_train // steps)]


@torch.no_grad()
def ldm_ddim_sample(model: ReferenceModel, c: torch.Tensor, v: torch.Tensor, T: torch.Tensor, *,
                    generator: torch.Generator, steps: int, scale: float, eta: float) -> torch.Tensor:
    """DDIMSampler.sample from x_T ~ N(0, I) (drawn first from `generator`, then each step's noise when eta > 0),
    alphas_prev = [alpha_bar(0)] + alpha_bar(t_{i-1}), sigma_t = eta sqrt((1 - a_prev) / (1 - a_t)
    (1 - a_t / a_prev)), x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma_t^2) e_t + sigma_t noise;
    then decode_first_stage and clamp((x + 1) / 2, 0, 1)."""
    context = model.context(c, T)
    shape = (len(T), 4, v.shape[-2], v.shape[-1])
    x = torch.randn(shape, generator=generator)
    ts = ldm_timesteps(steps)
    a = model.alphas
    a_prev_of = {t: (a[ts[i - 1]] if i > 0 else a[0]) for i, t in enumerate(ts)}
    for t in reversed(ts):
        e_t = model.guided_eps(x, t, context, v, scale)
        a_t, a_prev = a[t], a_prev_of[t]
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).sqrt() * e_t
        if eta > 0:
            x = x + sigma * torch.randn(shape, generator=generator)
    images = model.vae.decode(x / model.vae.config.scaling_factor).sample
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)
