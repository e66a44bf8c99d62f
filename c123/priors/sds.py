"""Score Distillation Sampling pieces shared by both diffusion priors (METHOD.md section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def w(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SDS weight w(t) = 1 - alpha_bar(t), one value per timestep in `t`."""
    return 1.0 - alphas_cumprod[t]


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: eps_uncond + scale * (eps_cond - eps_uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def sds_loss(latents: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """0.5 * ||z - sg(z - grad)||^2 summed / batch: d loss / d latents = grad / batch (= grad for one view)."""
    target = (latents - grad).detach()
    return 0.5 * ((latents - target) ** 2).sum() / latents.shape[0]


def sample_timesteps(batch: int, t_range: tuple[float, float], num_train_timesteps: int,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Integer timesteps uniform in [t_range[0], t_range[1]] x num_train_timesteps (inclusive), shape [batch]."""
    lo, hi = int(t_range[0] * num_train_timesteps), int(t_range[1] * num_train_timesteps)
    gen_device = generator.device if generator is not None else "cpu"
    t = torch.randint(lo, hi + 1, (batch,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def randn(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """Standard normal noise drawn from `generator` (on its own device) or the global RNG, moved to `device`."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device).to(device)


def add_noise(latents: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(z_t | z_0) = sqrt(ab) z_0 + sqrt(1 - ab) noise, per sample."""
    ab = alphas_cumprod[t].view(-1, 1, 1, 1).to(latents.dtype)
    return ab.sqrt() * latents + (1.0 - ab).sqrt() * noise


def diffuse(latents: torch.Tensor, t_range: tuple[float, float], num_train_timesteps: int,
            alphas_cumprod: torch.Tensor, generator: torch.Generator | None, device):
    """One SDS draw: (t, noise, z_t) with t uniform in t_range, then the noise, from `generator` in that order;
    z_t carries no graph (the gradient reaches the latents through `sds_loss` only)."""
    t = sample_timesteps(latents.shape[0], t_range, num_train_timesteps, generator, device)
    noise = randn(latents.shape, generator, device)
    with torch.no_grad():
        noisy = add_noise(latents, noise, alphas_cumprod, t)
    return t, noise, noisy


def to_epsilon(pred: torch.Tensor, noisy: torch.Tensor, alphas_cumprod: torch.Tensor, t: torch.Tensor,
               prediction_type: str) -> torch.Tensor:
    """The UNet output as a noise prediction (v-prediction models, e.g. SD 2.1 at 768, are converted)."""
    if prediction_type == "epsilon":
        return pred
    ab = alphas_cumprod[t].view(-1, 1, 1, 1).to(pred.dtype)
    return ab.sqrt() * pred + (1.0 - ab).sqrt() * noisy


def guided_grad(pred: torch.Tensor, noisy: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                alphas_cumprod: torch.Tensor, prediction_type: str, scale: float) -> torch.Tensor:
    """w(t) * (eps_hat - eps) from a UNet output on [cond; uncond] (both halves noised as `noisy`)."""
    both_t = torch.cat([t, t])
    eps_cond, eps_uncond = to_epsilon(pred, torch.cat([noisy, noisy]), alphas_cumprod, both_t,
                                      prediction_type).chunk(2)
    return w(alphas_cumprod, t).view(-1, 1, 1, 1) * (cfg_combine(eps_uncond, eps_cond, scale) - noise)


def encode_latents(vae, images: torch.Tensor, scaled: bool = True) -> torch.Tensor:
    """Images [B,3,H,W] in [0,1] -> VAE posterior mean latents (x scaling_factor when `scaled`); keeps grad."""
    dist = vae.encode(images.to(vae.dtype) * 2.0 - 1.0).latent_dist
    latents = dist.mean.float()
    return latents * vae.config.scaling_factor if scaled else latents


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize to size x size (no-op when already there)."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, (size, size), mode="bilinear", align_corners=False)
