"""Score Distillation Sampling pieces shared by both diffusion priors.

One SDS step draws its randomness from one generator in a fixed order (`draw`): first the VAE posterior
noise of the render latents, then the timestep (only when it is drawn), then the diffusion noise. It is the
order in which the official train_step functions consume the global RNG (guidance/sd_utils.py and
guidance/zero123_utils.py: encode_imgs samples the posterior, then t, then randn_like(latents)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def w(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SDS weight w(t) = 1 - alpha_bar(t), one value per timestep in `t`."""
    return 1.0 - alphas_cumprod[t]


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_uncond + scale * (eps_cond - eps_uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * ||z - sg(z - grad)||^2 summed / batch: d loss / d latents = grad / batch (= grad for one view,
    the official batch size, whose loss (grad * latents).sum() has the same gradient)."""
    target = (latents - grad).detach()
    return 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]


def sample_timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integer timesteps uniform in [t_range[0], t_range[1]] x num_train_timesteps (inclusive), shape [batch]."""
    lo, hi = int(t_range[0] * num_train_timesteps), int(t_range[1] * num_train_timesteps)
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(lo, hi + 1, (batch,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int, mode: str,
              generator: torch.Generator | None, device) -> torch.Tensor:
    """'max': t = int(num_train_timesteps * t_range[1]) for every view, nothing drawn (the official
    Zero-1-to-3 train_step); 'uniform': drawn by `sample_timesteps` (the official Stable Diffusion)."""
    if mode == "max":
        return torch.full((batch,), int(num_train_timesteps * t_range[1]), dtype=torch.long, device=device)
    return sample_timesteps(batch, t_range, num_train_timesteps, generator, device)


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device) or the global RNG, moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(z_t | z_0) = sqrt(ab) z_0 + sqrt(1 - ab) noise, per sample."""
    ab = alphas_cumprod[t].view(-1, 1, 1, 1).to(latents.dtype)
    return ab.sqrt() * latents + (1.0 - ab).sqrt() * noise


def posterior(vae, images: torch.Tensor):
    """The VAE's latent distribution of images [B,3,H,W] in [0,1] (mapped to [-1,1] as every reference does)."""
    return vae.encode(images.to(vae.dtype) * 2.0 - 1.0).latent_dist


def render_latents(vae, images: torch.Tensor, mode: str, generator: torch.Generator | None,
                   device) -> torch.Tensor:
    """Scaled float32 latents of renders, with their graph: 'sample' = mean + std * eps with eps from
    `generator` (the posterior sample of the official encode_imgs), 'mean' = the posterior mean."""
    dist = posterior(vae, images)
    latents = dist.mean
    if mode == "sample":
        latents = latents + dist.std * randn(latents.shape, generator, device).to(latents.dtype)
    return latents.float() * vae.config.scaling_factor


@dataclass
class Draw:
    """The random part of one SDS step: render latents (with graph), timesteps, noise, noised latents."""

    latents: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    noisy: torch.Tensor


def draw(vae, images: torch.Tensor, *, latent_mode: str, t_range: tuple[float, float], timestep_mode: str,
         num_train_timesteps: int, alphas_cumprod: torch.Tensor, generator: torch.Generator | None,
         device) -> Draw:
    """Encode renders and diffuse them: posterior noise, then t, then noise, all from `generator`.
    z_t carries no graph (the gradient reaches the latents through `sds_loss` only)."""
    latents = render_latents(vae, images, latent_mode, generator, device)
    t = timesteps(latents.shape[0], t_range, num_train_timesteps, timestep_mode, generator, device)
    noise = randn(latents.shape, generator, device)
    with torch.no_grad():
        noisy = add_noise(latents, noise, alphas_cumprod, t)
    return Draw(latents, t, noise, noisy)


def to_epsilon(pred: torch.Tensor, noisy: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """The UNet output as a noise prediction (v-prediction models, e.g. SD 2.1 at 768, are converted)."""
    if prediction_type == "epsilon":
        return pred
    ab = alphas_cumprod[t].view(-1, 1, 1, 1).to(pred.dtype)
    return ab.sqrt() * pred + (1.0 - ab).sqrt() * noisy


def guided_grad(pred: torch.Tensor, step: Draw, alphas_cumprod: torch.Tensor, prediction_type: str,
                scale: float) -> torch.Tensor:
    """float32 w(t) * (eps_hat - eps) from a UNet output on [uncond; cond] (the official batch order)."""
    both_t = torch.cat([step.t, step.t])
    eps_uncond, eps_cond = to_epsilon(pred.float(), torch.cat([step.noisy, step.noisy]), alphas_cumprod,
                                      both_t, prediction_type).chunk(2)
    return w(alphas_cumprod, step.t).view(-1, 1, 1, 1) * (cfg_combine(eps_uncond, eps_cond, scale) - step.noise)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (no-op when already there), as the official F.interpolate to 256/512."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
