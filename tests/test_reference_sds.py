"""Reference suite: the official SDS steps of lyk412/Consistent123, re-implemented here from their formulas,
against the project's priors on the tiny models, with the same t, noise and posterior-sample noise.

The reference side imports nothing of c123.priors: it loads the tiny model folders with diffusers and
transformers directly (the fp16_ema weights, as the official loads the EMA), rebuilds alpha_bar from the
scheduler config, and follows
  guidance/zero123_utils.py  Zero123.get_img_embeds / train_step / angle_between
  guidance/sd_utils.py       StableDiffusion.get_text_embeds / train_step
  nerf/utils.py              Trainer.prepare_embeddings / train_step (the interpolated SD text embedding)
  nerf/provider.py           circle_poses, get_rays (the official camera frame) and its delta angles.
The official camera frame is mirrored (right = forward x up): its render of an object from (polar, azimuth)
is ours of the x-mirrored object from (polar, -azimuth). `official_view` is that mapping, pinned by
`test_official_frame_is_our_frame_mirrored`; through it the Zero-1-to-3 camera vector, and so AZIMUTH_SIGN,
is checked, and the checks fail with the sign flipped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from c123.cameras import generate_rays, orbit_cameras
from c123.config import PriorConfig

RTOL = 1e-5
NERF, DMTET = (0.2, 0.6), (0.2, 0.5)
CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
SIZE = 32  # the tiny models' "256" (Zero-1-to-3) and "512" (Stable Diffusion) input sizes


def cams(polar, azimuth, radius):
    """Our spherical cameras (degrees), as the priors read them."""
    values = (torch.atleast_1d(torch.as_tensor(v, dtype=torch.float32)) for v in (polar, azimuth, radius))
    return SimpleNamespace(**dict(zip(("polar", "azimuth", "radius"), torch.broadcast_tensors(*values))))


def official_view(c):
    """Our camera (polar, azimuth, radius) as the official camera that renders the mirrored object identically."""
    return SimpleNamespace(polar=c.polar, azimuth=-c.azimuth, radius=c.radius)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return float((ours - ref).norm() / ref.norm())


# ---- the official camera frame (nerf/provider.py circle_poses, nerf/utils.py get_rays) ---------------
def official_rays(polar, azimuth, radius, fovy, size):
    """circle_poses + get_rays: the camera sits at r(sin t sin p, cos t, sin t cos p), its columns are
    right = normalize(forward x up), up = right x forward, forward (= the camera centre direction)."""
    theta, phi = torch.deg2rad(polar.double()), torch.deg2rad(azimuth.double())
    centres = radius[:, None] * torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], -1)
    forward = F.normalize(centres, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = F.normalize(torch.linalg.cross(forward, up), dim=-1)
    up = F.normalize(torch.linalg.cross(right, forward), dim=-1)
    rotation = torch.stack([right, up, forward], dim=-1)
    focal = size / (2 * math.tan(math.radians(fovy) / 2))
    i, j = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing="xy")  # i: column, j: row, as get_rays after its transpose
    xs, ys = (i + 0.5 - size / 2) / focal, -(j + 0.5 - size / 2) / focal
    directions = torch.stack([xs, ys, -torch.ones_like(xs)], -1).reshape(-1, 3)
    rays_d = torch.einsum("bij,nj->bni", rotation, directions)
    return centres[:, None].expand_as(rays_d), rays_d


def test_official_frame_is_our_frame_mirrored():
    """Every ray of our camera (t, p) is the x-mirror of the same pixel's ray of the official camera (t, -p):
    an official render of the mirrored object is our render of the object, pixel for pixel."""
    polar = torch.tensor([90.0, 75.0, 60.0, 105.0, 90.0])
    azimuth = torch.tensor([0.0, -120.0, 30.0, 170.0, 90.0])
    radius = torch.tensor([3.2, 3.4, 3.0, 3.5, 3.2])
    ours = orbit_cameras(polar.double(), azimuth.double(), radius.double(), 20.0)
    our_o, our_d = generate_rays(ours, 8, 8)
    off = official_view(SimpleNamespace(polar=polar, azimuth=azimuth, radius=radius))
    off_o, off_d = official_rays(off.polar, off.azimuth, off.radius.double(), 20.0, 8)
    mirror = torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(our_o.reshape(5, -1, 3), off_o * mirror)
    torch.testing.assert_close(our_d.reshape(5, -1, 3), F.normalize(off_d * mirror, dim=-1))
    # the frames are not the same: without the mirror the images would be left-right flipped
    assert not torch.allclose(our_d.reshape(5, -1, 3), F.normalize(off_d, dim=-1), atol=1e-3)


# ---- the official Zero-1-to-3 step (guidance/zero123_utils.py) --------------------------------------
def official_camera_vector(view, ref):
    """train_step's T from the provider's deltas (target - default view, azimuth wrapped to (-180, 180])."""
    p = view.polar - ref.polar
    a = view.azimuth - ref.azimuth
    a = torch.where(a > 180, a - 360, torch.where(a <= -180, a + 360, a))
    r = view.radius - ref.radius
    return torch.stack([torch.deg2rad(p), torch.sin(torch.deg2rad(-a)), torch.cos(torch.deg2rad(a)), r], -1)


def official_angle_scale(view, ref):
    """angle_between of the spherical vectors (r, theta, phi) / (180 / number of references)."""
    def cartesian(r, theta, phi):
        return torch.stack([r * theta.sin() * phi.cos(), r * theta.sin() * phi.sin(), r * theta.cos()], -1)

    v1 = cartesian(view.radius, torch.deg2rad(view.polar), torch.deg2rad(view.azimuth))
    v2 = cartesian(ref.radius, torch.deg2rad(ref.polar), torch.deg2rad(ref.azimuth))
    cos = (F.normalize(v1, dim=-1) * F.normalize(v2, dim=-1)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)) / 180.0


def alphas_cumprod(folder: Path) -> torch.Tensor:
    """DDIMScheduler(scaled_linear) as the official builds it from linear_start/linear_end."""
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert config["beta_schedule"] == "scaled_linear"
    betas = torch.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, config["num_train_timesteps"],
                           dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def encode_sample(vae, images, eps):
    """encode_imgs: x * 2 - 1, posterior sample mean + std * eps, x scale factor."""
    dist = vae.encode(images * 2 - 1).latent_dist
    return (dist.mean + dist.std * eps) * vae.config.scaling_factor


class OfficialZero123:
    def __init__(self, folder: Path):
        kw = dict(variant="fp16_ema", torch_dtype=torch.float32)
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kw).eval()
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **kw).eval()
        self.clip = CLIPVisionModelWithProjection.from_pretrained(
            folder / "image_encoder", variant="fp16_ema", dtype=torch.float32).eval()
        cc = load_file(folder / "clip_camera_projection" / "diffusion_pytorch_model.fp16_ema.safetensors")
        self.cc_weight, self.cc_bias = cc["proj.weight"].float(), cc["proj.bias"].float()
        self.alphas = alphas_cumprod(folder)

    @torch.no_grad()
    def get_img_embeds(self, x):
        """c_crossattn: CLIP of FrozenCLIPImageEmbedder.preprocess(x * 2 - 1), [1,1,D]; c_concat: the
        unscaled posterior mode."""
        x = x * 2 - 1
        size = self.clip.config.image_size
        pixels = F.interpolate(x, (size, size), mode="bicubic", align_corners=True)
        pixels = ((pixels + 1.0) / 2.0 - CLIP_MEAN) / CLIP_STD
        c = self.clip(pixel_values=pixels).image_embeds.float()[:, None]
        v = self.vae.encode(x).latent_dist.mode()
        return c, v

    def train_step(self, c, v, images, view, ref, t_range, eps_post, noise, guidance_scale=10.0):
        """The official step on official cameras; returns (loss, grad, latents)."""
        latents = encode_sample(self.vae, F.interpolate(images, (SIZE, SIZE), mode="bilinear", align_corners=False),
                                eps_post)
        t = torch.tensor([int(1000 * t_range[1])] * latents.shape[0], dtype=torch.long)
        with torch.no_grad():
            ab = self.alphas[t].view(-1, 1, 1, 1)
            noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
            x_in, t_in = torch.cat([noisy] * 2), torch.cat([t] * 2)
            T = official_camera_vector(view, ref)[:, None, :]
            clip_emb = F.linear(torch.cat([c.repeat(len(T), 1, 1), T], -1), self.cc_weight, self.cc_bias)
            crossattn = torch.cat([torch.zeros_like(clip_emb), clip_emb])
            concat = torch.cat([torch.zeros_like(v).repeat(len(T), 1, 1, 1), v.repeat(len(T), 1, 1, 1)])
            pred = self.unet(torch.cat([x_in, concat], 1), t_in, encoder_hidden_states=crossattn).sample
            uncond, cond = pred.chunk(2)
            noise_pred = uncond + guidance_scale * (cond - uncond)
            w = (official_angle_scale(view, ref) * (1 - self.alphas[t]))[:, None, None, None]
            grad = torch.nan_to_num(w * (noise_pred - noise))
        return (grad * latents).sum(), grad, latents



@pytest.fixture(scope="module")
def reference_image():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def zero123(tiny_dirs):
    from c123.priors.zero123 import Zero123Prior
    cfg = PriorConfig(zero123_size=SIZE, sd_size=SIZE)
    return Zero123Prior.from_pretrained(str(tiny_dirs["zero123"]), cfg, "cpu")


@pytest.fixture(scope="module")
def official_zero123(tiny_dirs):
    return OfficialZero123(tiny_dirs["zero123"])


def zero123_case(zero123, official, reference_image, view, ref, t_range, seed=3):
    """Both steps on the same renders, t and noise: (our latent grad, official grad, our and official image grads)."""
    zero123.set_reference(reference_image, ref)
    batch = view.polar.shape[0]
    images = torch.rand(batch, 3, 40, 40, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    zero123.loss(images, view, t_range=t_range, generator=torch.Generator().manual_seed(seed)).backward()

    # the documented draw order: posterior noise, (no t for Zero-1-to-3), diffusion noise
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 4, SIZE // 8, SIZE // 8)
    eps_post, noise = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    c, v = official.get_img_embeds(reference_image)
    x = images.detach().clone().requires_grad_(True)
    loss, grad, _ = official.train_step(c, v, x, official_view(view), official_view(ref), t_range, eps_post, noise)
    (loss / batch).backward()  # ours averages the per-view losses; the official batch is one view
    return zero123.last_grad, grad, images.grad, x.grad


REF = cams(90.0, 0.0, 3.2)
ZERO123_VIEWS = [
    (cams(75.0, -120.0, 3.4), REF, NERF),
    (cams(90.0, 90.0, 3.2), REF, NERF),
    (cams(60.0, 30.0, 3.0), REF, DMTET),
    (cams(105.0, 170.0, 3.5), REF, DMTET),
    (cams(85.0, -40.0, 3.3), cams(80.0, 30.0, 3.1), NERF),      # a reference off the default view
    (cams([70.0, 100.0], [150.0, -60.0], [3.0, 3.4]), REF, NERF),  # a batch of two views
]


@pytest.mark.parametrize("view, ref, t_range", ZERO123_VIEWS)
def test_zero123_sds_gradient_equals_the_official_step(zero123, official_zero123, reference_image, view, ref, t_range):
    ours, official, our_image_grad, official_image_grad = zero123_case(
        zero123, official_zero123, reference_image, view, ref, t_range)
    assert int(zero123.last_t[0]) == int(1000 * t_range[1])
    assert float(official.abs().max()) > 0
    assert relative_error(ours, official) <= RTOL
    assert relative_error(our_image_grad, official_image_grad) <= RTOL


def test_zero123_reference_conditioning_equals_get_img_embeds(zero123, official_zero123, reference_image):
    zero123.set_reference(reference_image, REF)
    c, v = official_zero123.get_img_embeds(reference_image)
    assert relative_error(zero123.clip_emb, c[:, 0]) <= RTOL
    assert relative_error(zero123.ref_latent, v) <= RTOL


def test_zero123_camera_vector_is_the_official_one_through_the_mirror():
    from c123.priors.zero123 import camera_vector
    view = cams([75.0, 90.0, 60.0, 105.0, 90.0], [-120.0, 90.0, 30.0, 170.0, 200.0], [3.4, 3.2, 3.0, 3.5, 3.2])
    ref = cams(80.0, 30.0, 3.1)
    official = official_camera_vector(official_view(view), official_view(ref))
    torch.testing.assert_close(camera_vector(view, ref), official, atol=1e-6, rtol=0)


def test_a_flipped_azimuth_sign_fails_the_reference(monkeypatch, zero123, official_zero123, reference_image):
    """The checks above have teeth: with AZIMUTH_SIGN = -1 both the camera vector and the gradient differ."""
    from c123.priors import zero123 as module
    monkeypatch.setattr(module, "AZIMUTH_SIGN", -1.0)
    view = cams(75.0, -120.0, 3.4)
    official = official_camera_vector(official_view(view), official_view(REF))
    assert not torch.allclose(module.camera_vector(view, REF), official, atol=1e-3)
    ours, official_grad, _, _ = zero123_case(zero123, official_zero123, reference_image, view, REF, NERF)
    assert relative_error(ours, official_grad) > 1e-3


# ---- the official Stable Diffusion step (guidance/sd_utils.py, nerf/utils.py) -----------------------
class OfficialStableDiffusion:
    def __init__(self, folder: Path, text: str):
        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch.float32).eval()
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32).eval()
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=torch.float32)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.alphas = alphas_cumprod(folder)
        self.embeddings = {"uncond": self.get_text_embeds([""])}  # --negative defaults to ''
        for d in ("front", "side", "back"):
            self.embeddings[d] = self.get_text_embeds([f"{text}, {d} view"])

    @torch.no_grad()
    def get_text_embeds(self, prompt):
        inputs = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                                return_tensors="pt")
        return self.text_encoder(inputs.input_ids)[0]

    def text_z(self, azimuth):
        """nerf/utils.py train_step (perpneg off): [uncond] * B + the interpolated embedding of each view."""
        text_z = [self.embeddings["uncond"]] * azimuth.shape[0]
        for a in azimuth:
            if -90 <= a < 90:
                r = 1 - a / 90 if a >= 0 else 1 + a / 90
                start, end = self.embeddings["front"], self.embeddings["side"]
            else:
                r = 1 - (a - 90) / 90 if a >= 0 else 1 + (a + 90) / 90
                start, end = self.embeddings["side"], self.embeddings["back"]
            text_z.append(r * start + (1 - r) * end)
        return torch.cat(text_z)

    def train_step(self, text_z, images, t, eps_post, noise, guidance_scale=10.0):
        latents = encode_sample(self.vae, F.interpolate(images, (SIZE, SIZE), mode="bilinear", align_corners=False),
                                eps_post)
        with torch.no_grad():
            ab = self.alphas[t].view(-1, 1, 1, 1)
            noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
            pred = self.unet(torch.cat([noisy] * 2), torch.cat([t] * 2), encoder_hidden_states=text_z).sample
            uncond, pos = pred.chunk(2)
            noise_pred = uncond + guidance_scale * (pos - uncond)
            grad = torch.nan_to_num((1 - self.alphas[t])[:, None, None, None] * (noise_pred - noise))
        return (grad * latents).sum(), grad


def provider_delta_azimuth(view, ref):
    """The provider's delta azimuth of the official camera: phis in [0, 360) minus the default, > 180 wrapped."""
    a = torch.remainder(official_view(view).azimuth, 360.0) - torch.remainder(official_view(ref).azimuth, 360.0)
    a = torch.where(a > 180, a - 360, a)
    return torch.where(a < -180, a + 360, a)


PROMPT = "a red chair"
SD_VIEWS = [
    (cams(90.0, 0.0, 3.2), REF, NERF),
    (cams(90.0, 45.0, 3.2), REF, NERF),
    (cams(80.0, -120.0, 3.3), REF, NERF),
    (cams(95.0, 100.0, 3.1), REF, DMTET),
    (cams(70.0, 180.0, 3.4), REF, DMTET),
    (cams(85.0, 10.0, 3.2), cams(90.0, 60.0, 3.2), NERF),   # delta azimuth -50 from a turned reference
    (cams([80.0, 100.0], [-30.0, 135.0], [3.2, 3.4]), REF, NERF),
]


@pytest.fixture(scope="module")
def sd(tiny_dirs):
    from c123.priors.stable_diffusion import StableDiffusionPrior
    return StableDiffusionPrior.from_pretrained(str(tiny_dirs["stable_diffusion"]),
                                                PriorConfig(zero123_size=SIZE, sd_size=SIZE), "cpu")


@pytest.fixture(scope="module")
def official_sd(tiny_dirs):
    return OfficialStableDiffusion(tiny_dirs["stable_diffusion"], PROMPT)


@pytest.mark.parametrize("view, ref, t_range", SD_VIEWS)
def test_sd_sds_gradient_equals_the_official_step(sd, official_sd, view, ref, t_range):
    sd.set_prompt(PROMPT, ref_azimuth=float(ref.azimuth[0]))
    seed, batch = 5, view.polar.shape[0]
    images = torch.rand(batch, 3, 40, 40, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    sd.loss(images, view, t_range=t_range, generator=torch.Generator().manual_seed(seed)).backward()

    # the documented draw order: posterior noise, t, diffusion noise
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 4, SIZE // 8, SIZE // 8)
    eps_post = torch.randn(shape, generator=gen)
    t = torch.randint(int(1000 * t_range[0]), int(1000 * t_range[1]) + 1, (batch,), generator=gen)
    noise = torch.randn(shape, generator=gen)
    x = images.detach().clone().requires_grad_(True)
    text_z = official_sd.text_z(provider_delta_azimuth(view, ref))
    loss, grad = official_sd.train_step(text_z, x, t, eps_post, noise)
    (loss / batch).backward()
    assert torch.equal(sd.last_t, t)
    assert relative_error(sd.last_grad, grad) <= RTOL
    assert relative_error(images.grad, x.grad) <= RTOL


def test_sd_text_embedding_is_the_official_interpolation(sd, official_sd):
    sd.set_prompt(PROMPT)
    view = cams(90.0, torch.arange(-180.0, 181.0, 15.0), 3.2)
    official = official_sd.text_z(provider_delta_azimuth(view, REF))[view.polar.shape[0]:]
    assert relative_error(sd.text_embeddings(view), official) <= RTOL
    torch.testing.assert_close(sd.negative_embeds, official_sd.embeddings["uncond"])
