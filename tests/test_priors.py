"""Priors: SDS algebra, Zero-1-to-3 camera vector and angle scaling, view prompts, tiny-model round trips,
missing weights and empty prompts. Tiny random models only (offline)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from c123.config import PriorConfig
from c123.errors import InputError, WeightsMissingError
from c123.priors import sds
from c123.priors.weights import resolve, runtime_dtypes, select_files
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
    """The tiny models as `c123 models tiny DIR` writes them."""
    from c123.cli import main
    from c123.priors.tiny import NAMES
    root = tmp_path_factory.mktemp("tiny-models")
    assert main(["models", "tiny", str(root)]) == 0
    return {role: str(root / name) for role, name in NAMES.items()}


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
    assert write_tiny_models(root) == tiny_dirs
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
    assert prior.last_grad.dtype == torch.float32 and prior.last_grad.shape == (2, 4, 4, 4)


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
def test_missing_hub_model_fails_naming_model_and_fix(monkeypatch_module):
    with pytest.raises(WeightsMissingError) as err:
        resolve("c123-tests/no-such-model", "Zero-1-to-3 (the 3D prior)")
    message = str(err.value)
    assert "c123-tests/no-such-model" in message and "Zero-1-to-3" in message
    assert "hf download c123-tests/no-such-model" in message and "\n" not in message


def test_missing_or_incomplete_local_folder(tmp_path):
    with pytest.raises(WeightsMissingError, match="c123 models tiny DIR"):
        resolve(str(tmp_path / "nothing-here"), "CLIP")
    with pytest.raises(WeightsMissingError, match="model_index.json"):
        resolve(str(tmp_path), "CLIP")


# ---- 3.a timesteps: Zero-1-to-3 at max_step, Stable Diffusion uniform ----------------------------------
@pytest.mark.parametrize("t_range, expected", [((0.2, 0.6), 600), ((0.2, 0.5), 500)])
def test_zero123_uses_the_max_step_of_the_stage_range(zero123, t_range, expected):
    """zero123_utils.py train_step: t = max_step = int(1000 * t_range[1]) for every view and seed."""
    for seed in range(3):
        zero123.loss(renders(batch=2), cams([80.0, 95.0], [60.0, 170.0]), t_range=t_range,
                     generator=torch.Generator().manual_seed(seed))
        assert zero123.last_t.tolist() == [expected, expected]


def test_uniform_timesteps_are_drawn_in_the_range(zero123, sd, prior_cfg):
    """SD's t (and Zero-1-to-3's with zero123_timestep='uniform') is uniform in t_range and varies by seed."""
    zero123.cfg = PriorConfig(**{**vars(prior_cfg), "zero123_timestep": "uniform"})
    try:
        for prior in (zero123, sd):
            drawn = set()
            for seed in range(6):
                prior.loss(renders(), cams(80.0, 60.0), t_range=T_RANGE, generator=torch.Generator().manual_seed(seed))
                drawn.add(int(prior.last_t))
            assert len(drawn) > 1 and all(200 <= t <= 600 for t in drawn)
    finally:
        zero123.cfg = prior_cfg


# ---- 3.c SD view prompts: interpolated front/side/back embeddings ------------------------------------
@pytest.mark.parametrize("azimuth, mix", [
    (0.0, [1, 0, 0]), (45.0, [0.5, 0.5, 0]), (-45.0, [0.5, 0.5, 0]), (60.0, [1 / 3, 2 / 3, 0]),
    (90.0, [0, 1, 0]), (-90.0, [0, 1, 0]), (135.0, [0, 0.5, 0.5]), (-150.0, [0, 1 / 3, 2 / 3]),
    (180.0, [0, 0, 1]), (-180.0, [0, 0, 1]), (270.0, [0, 1, 0]), (315.0, [0.5, 0.5, 0]),
])
def test_view_mix_interpolates_front_side_back(azimuth, mix):
    """nerf/utils.py train_step: r = 1 - |a|/90 (front..side), r = 1 - (|a| - 90)/90 (side..back)."""
    from c123.priors.stable_diffusion import view_mix
    torch.testing.assert_close(view_mix(torch.tensor([azimuth]))[0], torch.tensor(mix, dtype=torch.float32))


def test_sd_text_embedding_follows_the_delta_azimuth_to_the_reference(sd):
    """The embedding mixes the three prompts by the azimuth relative to the reference camera."""
    try:
        sd.set_prompt("a red chair", ref_azimuth=60.0)
        front, side, back = sd.view_embeds
        got = sd.text_embeddings(cams([90.0] * 4, [60.0, 105.0, 150.0, 240.0]))
        torch.testing.assert_close(got[0], front)
        torch.testing.assert_close(got[1], 0.5 * front + 0.5 * side)
        torch.testing.assert_close(got[2], side)
        torch.testing.assert_close(got[3], back)
    finally:
        sd.set_prompt("a red chair")


def test_sd_bucket_prompts_are_the_documented_alternative(sd, prior_cfg):
    from c123.priors.stable_diffusion import view_index
    sd.cfg = PriorConfig(**{**vars(prior_cfg), "sd_view_prompt": "bucket"})
    try:
        azimuth = torch.tensor([0.0, 45.0, 100.0, 160.0, -170.0])
        torch.testing.assert_close(sd.text_embeddings(cams(90.0, azimuth)), sd.view_embeds[view_index(azimuth)])
    finally:
        sd.cfg = prior_cfg


# ---- 3.e Zero-1-to-3 EMA weights: the fp16_ema variant, recorded, and only it downloaded -------------
def weights_file(folder: Path, variant: str | None) -> Path:
    stem = "model" if (folder / "model.safetensors").exists() else "diffusion_pytorch_model"
    return folder / (f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors")


def test_zero123_loads_the_fp16_ema_weights_upcast_and_records_them(tiny_dirs, zero123):
    """The tiny folder (written by `c123 models tiny`) holds both files; the EMA one is loaded in float32."""
    unet = Path(tiny_dirs["zero123"]) / "unet"
    ema, plain = load_file(weights_file(unet, "fp16_ema")), load_file(weights_file(unet, None))
    name = "conv_in.weight"
    assert ema[name].dtype == torch.float16 and plain[name].dtype == torch.float32
    loaded = zero123.unet.state_dict()[name]
    assert loaded.dtype == torch.float32 and torch.equal(loaded, ema[name].float())
    assert not torch.allclose(loaded, plain[name])
    assert zero123.variants == dict.fromkeys(("unet", "vae", "image_encoder", "clip_camera_projection"), "fp16_ema")
    assert zero123.variant_loaded == "fp16_ema"


def test_zero123_default_variant_and_fallback_are_recorded(tiny_dirs, prior_cfg, tmp_path):
    from c123.priors.zero123 import Zero123Prior
    plain_cfg = PriorConfig(**{**vars(prior_cfg), "zero123_variant": "default"})
    prior = Zero123Prior.from_pretrained(tiny_dirs["zero123"], plain_cfg, "cpu")
    plain = load_file(weights_file(Path(tiny_dirs["zero123"]) / "unet", None))
    assert torch.equal(prior.unet.state_dict()["conv_in.weight"], plain["conv_in.weight"])
    assert prior.variant_loaded == "default"
    # a folder without the EMA files (e.g. ashawkey/zero123-xl-diffusers) loads the unsuffixed ones, recorded
    copy = shutil.copytree(tiny_dirs["zero123"], tmp_path / "zero123")
    (copy / "vae" / "diffusion_pytorch_model.fp16_ema.safetensors").unlink()
    mixed = Zero123Prior.from_pretrained(str(copy), prior_cfg, "cpu")
    assert mixed.variants["vae"] == "default" and mixed.variants["unet"] == "fp16_ema"
    assert mixed.variant_loaded == "clip_camera_projection=fp16_ema,image_encoder=fp16_ema,unet=fp16_ema,vae=default"


def test_sd_and_clip_load_the_unsuffixed_weights(sd, tiny_dirs):
    from c123.priors.clip import ClipModel
    assert sd.variant_loaded == "default"
    assert ClipModel.from_pretrained(tiny_dirs["clip"], "cpu").variant_loaded == "default"


ZERO123_XL_FILES = [  # huggingface.co/bennyguo/zero123-xl-diffusers, main
    ".gitattributes", "README.md", "model_index.json", "feature_extractor/preprocessor_config.json",
    "scheduler/scheduler_config.json",
    *(f"{sub}/{f}" for sub in ("unet", "vae", "clip_camera_projection") for f in (
        "config.json", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
        "diffusion_pytorch_model.fp16_ema.safetensors")),
    "image_encoder/config.json", "image_encoder/model.safetensors", "image_encoder/model.fp16.safetensors",
    "image_encoder/model.fp16_ema.safetensors",
]
SD21_BASE_FILES = [  # huggingface.co/stabilityai/stable-diffusion-2-1-base, main
    ".gitattributes", "README.md", "model_index.json", "v2-1_512-ema-pruned.ckpt", "v2-1_512-ema-pruned.safetensors",
    "v2-1_512-nonema-pruned.ckpt", "v2-1_512-nonema-pruned.safetensors", "scheduler/scheduler_config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors", "text_encoder/model.safetensors",
    "text_encoder/pytorch_model.bin", "text_encoder/pytorch_model.fp16.bin",
    *(f"{sub}/{f}" for sub in ("unet", "vae") for f in (
        "config.json", "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin",
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")),
]
CLIP_B16_FILES = [".gitattributes", "README.md", "config.json", "flax_model.msgpack", "merges.txt",
                  "preprocessor_config.json", "pytorch_model.bin", "special_tokens_map.json", "tf_model.h5",
                  "tokenizer.json", "tokenizer_config.json", "vocab.json"]


def test_downloads_fetch_only_the_loaded_weights():
    from c123.priors.zero123 import weight_preference
    z = select_files(ZERO123_XL_FILES, weight_preference("fp16_ema"))
    assert [f for f in z if "safetensors" in f] == [
        "clip_camera_projection/diffusion_pytorch_model.fp16_ema.safetensors",
        "image_encoder/model.fp16_ema.safetensors", "unet/diffusion_pytorch_model.fp16_ema.safetensors",
        "vae/diffusion_pytorch_model.fp16_ema.safetensors"]
    assert "model_index.json" in z and "scheduler/scheduler_config.json" in z and "README.md" not in z
    sd_files = select_files(SD21_BASE_FILES, (None, "fp16"))
    assert [f for f in sd_files if not f.endswith((".json", ".txt"))] == [
        "text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors"]
    assert "tokenizer/merges.txt" in sd_files and "tokenizer/vocab.json" in sd_files
    clip_files = select_files(CLIP_B16_FILES, (None, "fp16"))
    assert "pytorch_model.bin" in clip_files and not any(f.endswith((".h5", ".msgpack")) for f in clip_files)


# ---- 3.n render latents from the posterior sample, drawn first from the step's generator -------------
@pytest.mark.parametrize("which", ["zero123", "sd"])
def test_render_latents_are_the_posterior_sample_of_the_first_draw(which, zero123, sd):
    prior = zero123 if which == "zero123" else sd
    images = renders(seed=2).detach()
    dist = sds.posterior(prior.vae, images[:, :, :32, :32])
    eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(4))
    scale = prior.vae.config.scaling_factor
    got = sds.render_latents(prior.vae, images[:, :, :32, :32], "sample", torch.Generator().manual_seed(4), "cpu")
    torch.testing.assert_close(got, (dist.mean + dist.std * eps) * scale)
    mean = sds.render_latents(prior.vae, images[:, :, :32, :32], "mean", torch.Generator().manual_seed(4), "cpu")
    torch.testing.assert_close(mean, dist.mean * scale)
    assert not torch.allclose(got, mean)


# ---- 3.p / 3.m precision: -O on CUDA, float32 on CPU, SDS gradients in float32 -----------------------
@pytest.mark.parametrize("precision, device, half_weights, expected", [
    ("fp16", "cuda", True, (torch.float16, True)),    # Stable Diffusion, the detector's CLIP
    ("fp16", "cuda", False, (torch.float32, True)),   # Zero-1-to-3: fp32 weights under autocast
    ("fp32", "cuda", True, (torch.float32, False)),
    ("fp16", "cpu", True, (torch.float32, False)),
    ("fp32", "cpu", False, (torch.float32, False)),
])
def test_runtime_dtypes_follow_the_official_O_flag(precision, device, half_weights, expected):
    assert runtime_dtypes(precision, device, half_weights) == expected


def test_priors_on_cpu_run_float32_whatever_the_precision(zero123, sd, tiny_dirs):
    from c123.priors.clip import ClipModel
    assert zero123.cfg.precision == "fp16" and not zero123.use_autocast and not sd.use_autocast
    assert zero123.unet.dtype == sd.unet.dtype == sd.vae.dtype == torch.float32
    clip = ClipModel.from_pretrained(tiny_dirs["clip"], "cpu", precision="fp16")
    assert clip.model.dtype == torch.float32 and not clip.use_autocast


def test_fast_kernels_change_nothing_on_cpu_and_select_sdpa_and_tf32_for_cuda(sd):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    from c123.priors.weights import fast_kernels
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    sd.unet.set_attn_processor(AttnProcessor())
    assert not fast_kernels(sd.unet, "cpu")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == flags
    assert all(type(p) is AttnProcessor for p in sd.unet.attn_processors.values())
    try:  # the CUDA choice only sets flags and processors: checkable without a GPU
        assert fast_kernels(sd.unet, "cuda")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert all(type(p) is AttnProcessor2_0 for p in sd.unet.attn_processors.values())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.mark.parametrize("field, value", [("zero123_timestep", "min"), ("sd_view_prompt", "nearest"),
                                          ("render_latents", "mode"), ("zero123_variant", "ema"),
                                          ("precision", "bf16")])
def test_unknown_prior_choices_are_one_line_errors_before_any_weights_load(tmp_path, field, value):
    """A prior built without c123.config_checks.validate refuses the value as validate does (the choices
    declared once, at the field), before it reads a file: the folders here do not exist."""
    from c123.config_checks import ConfigError
    from c123.priors.stable_diffusion import StableDiffusionPrior
    from c123.priors.zero123 import Zero123Prior
    cfg = PriorConfig(**{field: value})
    prior = Zero123Prior if field in ("zero123_timestep", "zero123_variant") else StableDiffusionPrior
    with pytest.raises(ConfigError, match=f'^config prior.{field}="{value}" must be one of ') as err:
        prior.from_pretrained(str(tmp_path / "absent"), cfg, "cpu")
    assert "\n" not in str(err.value)


def test_paper_prior_fields_are_the_official_values():
    """The `paper` preset's priors as lyk412/Consistent123 runs them (main.py image+text setup, -O)."""
    from c123.config import paper
    p = paper().prior
    assert (p.zero123_timestep, p.sd_view_prompt, p.render_latents, p.zero123_variant, p.precision) == (
        "max", "interpolate", "sample", "fp16_ema", "fp16")
    assert (p.guidance_scale_3d, p.guidance_scale_2d, p.t_range_nerf, p.t_range_dmtet) == (10.0, 10.0, (0.2, 0.6),
                                                                                             (0.2, 0.5))
    assert p.angle_scaled_gradient


def test_the_O_path_keeps_sds_gradients_float32_and_close_to_fp32(tiny_dirs, prior_cfg, zero123, sd, monkeypatch):
    """precision 'fp16' as on CUDA (autocast runs on this CPU): SD loads float16 weights, Zero-1-to-3 float32
    weights under autocast; both SDS gradients stay float32, finite and within 2% of the float32 step."""
    from c123.priors import stable_diffusion, zero123 as zero123_module

    def as_on_cuda(precision, device, half_weights):
        return (torch.float16 if half_weights else torch.float32), True

    monkeypatch.setattr(zero123_module, "runtime_dtypes", as_on_cuda)
    monkeypatch.setattr(stable_diffusion, "runtime_dtypes", as_on_cuda)
    half_z = zero123_module.Zero123Prior.from_pretrained(tiny_dirs["zero123"], prior_cfg, "cpu")
    half_z.set_reference(torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(1)), REF)
    half_sd = stable_diffusion.StableDiffusionPrior.from_pretrained(tiny_dirs["stable_diffusion"], prior_cfg, "cpu")
    half_sd.set_prompt("a red chair")
    assert half_z.unet.dtype == torch.float32 and half_z.use_autocast
    assert half_sd.unet.dtype == half_sd.vae.dtype == half_sd.text_encoder.dtype == torch.float16
    for half, full in ((half_z, zero123), (half_sd, sd)):
        grads = []
        for prior in (full, half):
            images = renders(seed=6)
            prior.loss(images, cams(80.0, 60.0, 3.3), t_range=T_RANGE,
                       generator=torch.Generator().manual_seed(2)).backward()
            assert prior.last_grad.dtype == images.grad.dtype == torch.float32
            grads.append((prior.last_grad, images.grad))
        (g32, i32), (g16, i16) = grads
        assert torch.isfinite(i16).all()
        assert float((g16 - g32).norm() / g32.norm()) < 0.02 and float((i16 - i32).norm() / i32.norm()) < 0.02


def test_a_download_fetches_only_the_selected_files(monkeypatch, tiny_dirs):
    """With C123_ALLOW_DOWNLOAD=1 the Hub listing is filtered by `select_files` before snapshot_download."""
    import huggingface_hub
    from c123.priors.zero123 import weight_preference
    asked = {}

    def fake_snapshot(repo_id, allow_patterns=None, **kw):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns, **kw)
        return tiny_dirs["zero123"]

    monkeypatch.setenv("C123_ALLOW_DOWNLOAD", "1")
    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id: ZERO123_XL_FILES)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    path = resolve("bennyguo/zero123-xl-diffusers", "Zero-1-to-3", weight_preference("fp16_ema"))
    assert path == tiny_dirs["zero123"] and asked["repo_id"] == "bennyguo/zero123-xl-diffusers"
    assert asked["allow_patterns"] == select_files(ZERO123_XL_FILES, weight_preference("fp16_ema"))
    assert not any(f.endswith(("model.safetensors", "fp16.safetensors")) for f in asked["allow_patterns"])
