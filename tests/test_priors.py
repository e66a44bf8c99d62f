"""Priors: SDS algebra, Zero-1-to-3 camera vector and angle scaling, view prompts, tiny-model round trips,
missing weights and empty prompts. Tiny random models only (offline)."""

from __future__ import annotations

import json
import math
import time
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from c123.config import PriorConfig
from c123.errors import InputError, WeightsMissingError
from c123.priors import sds
from c123.priors.weights import resolve
from c123.priors.zero123 import camera_vector, view_angle


def cams(polar, azimuth, radius=3.2):
    """Duck-typed cameras: the priors only read polar/azimuth/radius [B] in degrees."""
    values = (torch.atleast_1d(torch.as_tensor(v, dtype=torch.float32)) for v in (polar, azimuth, radius))
    polar, azimuth, radius = torch.broadcast_tensors(*values)
    return SimpleNamespace(polar=polar, azimuth=azimuth, radius=radius)


REF = cams(90.0, 0.0, 3.2)
T_RANGE = (0.2, 0.6)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory, monkeypatch_module):
    from c123.priors.tiny import write_tiny_models
    return write_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.delenv("C123_ALLOW_DOWNLOAD", raising=False)
    yield mp
    mp.undo()


@pytest.fixture(scope="module")
def prior_cfg():
    return PriorConfig(zero123_size=32, sd_size=32, clip_size=32)


@pytest.fixture(scope="module")
def zero123(tiny_dirs, prior_cfg):
    from c123.priors.zero123 import Zero123Prior
    prior = Zero123Prior.from_pretrained(resolve(tiny_dirs["zero123"], "Zero-1-to-3"), prior_cfg, "cpu")
    prior.set_reference(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)), REF)
    return prior


@pytest.fixture(scope="module")
def sd(tiny_dirs, prior_cfg):
    from c123.priors.stable_diffusion import StableDiffusionPrior
    prior = StableDiffusionPrior.from_pretrained(resolve(tiny_dirs["stable_diffusion"], "SD"), prior_cfg, "cpu")
    prior.set_prompt("a red chair")
    return prior


def renders(batch=1, size=40, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)


# ---- SDS algebra ----------------------------------------------------------------------------------
def test_sds_loss_gradient_is_the_injected_gradient():
    alphas = torch.linspace(0.999, 0.01, 1000)
    t = torch.tensor([300, 550])
    latents = torch.randn(2, 4, 8, 8, requires_grad=True)
    eps, eps_hat = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    grad = sds.w(alphas, t).view(-1, 1, 1, 1) * (eps_hat - eps)
    sds.sds_loss(latents, grad).backward()
    hand = (1 - alphas[t]).view(-1, 1, 1, 1) * (eps_hat - eps)
    # summed over elements, divided by the batch: per-sample gradient grad / B (exactly grad for one view)
    torch.testing.assert_close(latents.grad, hand / 2)
    one = latents[:1].detach().clone().requires_grad_(True)
    sds.sds_loss(one, hand[:1]).backward()
    torch.testing.assert_close(one.grad, hand[:1])


def test_cfg_combine_form():
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.5])
    torch.testing.assert_close(sds.cfg_combine(uncond, cond, 10.0), uncond + 10.0 * (cond - uncond))
    torch.testing.assert_close(sds.cfg_combine(uncond, cond, 1.0), cond)
    torch.testing.assert_close(sds.cfg_combine(uncond, cond, 0.0), uncond)


def test_sample_timesteps_stays_in_range_inclusive():
    t = sds.sample_timesteps(4000, (0.2, 0.6), 1000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and int(t.min()) == 200 and int(t.max()) == 600


def test_v_prediction_converts_to_epsilon():
    alphas, t = torch.linspace(0.99, 0.05, 1000), torch.tensor([400])
    x0, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    ab = alphas[t].view(-1, 1, 1, 1)
    noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    torch.testing.assert_close(sds.to_epsilon(v, noisy, alphas, t, "v_prediction"), eps)
    torch.testing.assert_close(sds.add_noise(x0, eps, alphas, t), noisy)


# ---- Zero-1-to-3 camera -----------------------------------------------------------------------------
@pytest.mark.parametrize("target, expected", [
    ((90.0, 90.0, 3.2), [0.0, 1.0, 0.0, 0.0]),     # camera moved to its own right by 90 deg
    ((90.0, -90.0, 3.2), [0.0, -1.0, 0.0, 0.0]),
    ((90.0, 180.0, 3.2), [0.0, 0.0, -1.0, 0.0]),
    ((60.0, 0.0, 3.5), [-math.pi / 6, 0.0, 1.0, 0.3]),  # 30 deg higher, farther
])
def test_camera_vector_known_cameras(target, expected):
    vec = camera_vector(cams(*target), REF)
    torch.testing.assert_close(vec, torch.tensor([expected]), atol=1e-5, rtol=0)


def test_camera_vector_is_relative_to_the_reference():
    vec = camera_vector(cams([90.0, 45.0], [120.0, 0.0], [3.0, 3.2]), cams(80.0, 30.0, 3.2))
    torch.testing.assert_close(vec[1], torch.tensor([math.radians(-35.0), -0.5, math.sqrt(3) / 2, 0.0]),
                               atol=1e-5, rtol=0)


def test_view_angle_is_the_great_circle_angle():
    angles = view_angle(cams([90.0, 90.0, 90.0, 60.0, 0.0], [0.0, 90.0, 180.0, 0.0, 77.0]), REF)
    torch.testing.assert_close(angles, torch.tensor([0.0, 90.0, 180.0, 30.0, 90.0]), atol=1e-3, rtol=0)


def test_zero123_gradient_is_scaled_by_angle_over_180(tiny_dirs, prior_cfg, zero123):
    view = cams(90.0, 90.0)
    images = renders()

    def image_grad(prior):
        images.grad = None
        prior.loss(images, view, t_range=T_RANGE, generator=torch.Generator().manual_seed(3)).backward()
        return images.grad.clone()

    scaled = image_grad(zero123)
    zero123.cfg = PriorConfig(**{**vars(prior_cfg), "angle_scaled_gradient": False})
    try:
        plain = image_grad(zero123)
    finally:
        zero123.cfg = prior_cfg
    torch.testing.assert_close(scaled, plain * 0.5, rtol=1e-4, atol=1e-7)
    images.grad = None
    zero123.loss(images, REF, t_range=T_RANGE).backward()  # at the reference itself: no 3D guidance
    assert float(images.grad.abs().max()) == 0.0


def test_zero123_sds_gradient_matches_hand_computation(zero123):
    """Image gradient of loss() == VJP of the VAE encoder with w(t)(eps_hat - eps) * angle/180, built by hand."""
    view, images, seed, scale = cams(75.0, -120.0, 3.4), renders(seed=5), 11, 10.0
    zero123.loss(images, view, t_range=T_RANGE, generator=torch.Generator().manual_seed(seed)).backward()

    gen = torch.Generator().manual_seed(seed)
    x = images.detach().clone().requires_grad_(True)
    latents = sds.encode_latents(zero123.vae, sds.resize(x, 32))
    t = sds.sample_timesteps(1, T_RANGE, 1000, gen)
    noise = torch.randn(latents.shape, generator=gen)
    with torch.no_grad():
        ab = zero123.alphas_cumprod[t]
        noisy = ab.sqrt() * latents + (1 - ab).sqrt() * noise
        emb = zero123.projection(torch.cat([zero123.clip_emb, camera_vector(view, REF)], -1))[:, None]
        e_cond = zero123.unet(torch.cat([noisy, zero123.ref_latent], 1), t, encoder_hidden_states=emb).sample
        e_unc = zero123.unet(torch.cat([noisy, torch.zeros_like(noisy)], 1), t,
                             encoder_hidden_states=torch.zeros_like(emb)).sample
        angle = math.degrees(math.acos(math.sin(math.radians(75)) * math.cos(math.radians(-120))))
        hand = (1 - ab) * (e_unc + scale * (e_cond - e_unc) - noise) * angle / 180
    latents.backward(hand)
    assert int(zero123.last_t) == int(t)
    assert float(x.grad.abs().max()) > 0
    # batched (cond+uncond in one UNet call) vs two calls: equal up to float32 summation order
    torch.testing.assert_close(images.grad, x.grad, rtol=1e-3, atol=1e-4 * float(x.grad.abs().max()))


# ---- Stable Diffusion view prompts -----------------------------------------------------------------
def test_view_index_thresholds():
    from c123.priors.stable_diffusion import VIEWS, view_index
    az = torch.tensor([0.0, 29.0, -29.0, 31.0, 90.0, -90.0, 149.0, 150.0, 180.0, -179.0, 359.0, 200.0])
    names = [VIEWS[i] for i in view_index(az)]
    assert names == ["front", "front", "front", "side", "side", "side", "side", "back", "back", "back",
                     "front", "back"]


def test_set_prompt_embeds_view_dependent_prompts(sd):
    expected = sd.encode_text(["a red chair, front view", "a red chair, side view", "a red chair, back view"])
    torch.testing.assert_close(sd.view_embeds, expected)
    torch.testing.assert_close(sd.negative_embeds, sd.encode_text([""]))
    assert not torch.allclose(sd.view_embeds[0], sd.view_embeds[2])


@pytest.mark.parametrize("text", ["", "   \n"])
def test_empty_prompt_is_an_input_error(sd, text):
    with pytest.raises(InputError, match="empty prompt: Stable Diffusion needs a text prompt; pass --prompt"):
        sd.set_prompt(text)


# ---- tiny models: layout, round trip, one SDS step each ---------------------------------------------
def test_tiny_models_layout_and_idempotence(tiny_dirs, tmp_path):
    from pathlib import Path
    from c123.priors.tiny import write_tiny_models

    z = Path(tiny_dirs["zero123"])
    index = json.loads((z / "model_index.json").read_text())
    assert index["clip_camera_projection"] == ["zero123", "CLIPCameraProjection"]
    proj_cfg = json.loads((z / "clip_camera_projection" / "config.json").read_text())
    assert proj_cfg["_class_name"] == "CLIPCameraProjection" and proj_cfg["additional_embeddings"] == 4
    weights = load_file(z / "clip_camera_projection" / "diffusion_pytorch_model.safetensors")
    dim = proj_cfg["embedding_dim"]
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"proj.weight": (dim, dim + 4), "proj.bias": (dim,)}
    assert json.loads((z / "unet" / "config.json").read_text())["in_channels"] == 8
    s = Path(tiny_dirs["stable_diffusion"])
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (s / "tokenizer").iterdir()}
    root = z.parent
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) < 20e6
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    assert write_tiny_models(root) == tiny_dirs
    assert time.perf_counter() - start < 0.5
    assert before == {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_tiny_stable_diffusion_loads_as_a_diffusers_pipeline(tiny_dirs):
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dirs["stable_diffusion"], safety_checker=None)
    assert pipe.unet.config.in_channels == 4 and pipe.tokenizer.model_max_length == 77


@pytest.mark.parametrize("which", ["zero123", "sd"])
def test_one_sds_step_gives_finite_nonzero_image_gradients(which, zero123, sd):
    prior = zero123 if which == "zero123" else sd
    images = renders(batch=2)
    loss = prior.loss(images, cams([80.0, 95.0], [60.0, 170.0], [3.1, 3.4]), t_range=T_RANGE)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(images.grad).all() and float(images.grad.abs().sum()) > 0
    assert prior.last_t.shape == (2,) and bool(((prior.last_t >= 200) & (prior.last_t <= 600)).all())
    assert torch.isfinite(prior.last_grad_norm)


def test_clip_embeddings_are_unit_and_similarity_is_cosine(tiny_dirs):
    from c123.priors.clip import ClipModel
    clip = ClipModel.from_pretrained(resolve(tiny_dirs["clip"], "CLIP"), "cpu")
    with torch.no_grad():
        img, txt = clip.image_embeds(renders(batch=3).detach()), clip.text_embeds(["a chair", "a dog"])
        sim = clip.similarity(renders(batch=3).detach(), ["a chair", "a dog"])
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(txt.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(sim, img @ txt.T)


# ---- missing weights ---------------------------------------------------------------------------------
def test_missing_hub_model_fails_fast_naming_model_and_fix(monkeypatch_module):
    start = time.perf_counter()
    with pytest.raises(WeightsMissingError) as err:
        resolve("c123-tests/no-such-model", "Zero-1-to-3 (the 3D prior)")
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert "c123-tests/no-such-model" in message and "Zero-1-to-3" in message
    assert "hf download c123-tests/no-such-model" in message and "\n" not in message


def test_missing_or_incomplete_local_folder(tmp_path):
    with pytest.raises(WeightsMissingError, match="c123 models tiny DIR"):
        resolve(str(tmp_path / "nothing-here"), "CLIP")
    with pytest.raises(WeightsMissingError, match="model_index.json"):
        resolve(str(tmp_path), "CLIP")
