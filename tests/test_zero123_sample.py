"""`sample`: the 3D prior's own novel views (Zero-1-to-3's DDIM sampler with classifier-free guidance), for
Zero-1-to-3 and Stable Zero123 on the tiny models, against ldm's DDIMSampler re-implemented in
tests/zero123_reference.py with the camera vectors of threestudio's get_cond."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from c123.config import PriorConfig
from zero123_reference import ReferenceModel, cams, ldm_ddim_sample, ldm_timesteps, threestudio_vector

SIZE = 32
REF = cams(80.0, 20.0, 3.2)
VIEWS = cams([70.0, 100.0, 95.0], [60.0, -90.0, 170.0], [3.2, 3.0, 3.4])
FAMILIES = ["zero123", "stable-zero123"]



@pytest.fixture(scope="module")
def reference_image():
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(11))


@pytest.fixture(scope="module")
def priors(tiny_dirs, reference_image):
    from c123.priors.stable_zero123 import StableZero123Prior
    from c123.priors.zero123 import Zero123Prior
    cfg = PriorConfig(zero123_size=SIZE, sd_size=SIZE)
    loaded = {"zero123": Zero123Prior.from_pretrained(str(tiny_dirs["zero123"]), cfg, "cpu"),
              "stable-zero123": StableZero123Prior.from_pretrained(str(tiny_dirs["stable_zero123"]), cfg, "cpu")}
    for prior in loaded.values():
        prior.set_reference(reference_image, REF)
    return loaded


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_gives_images_in_unit_range_at_the_prior_input_size(priors, family):
    images = priors[family].sample(VIEWS, generator=gen(0), steps=3)
    assert images.shape == (3, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert float(images.std()) > 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_is_deterministic_under_the_same_generator_and_differs_across_seeds(priors, family):
    first = priors[family].sample(VIEWS, generator=gen(3), steps=3)
    assert torch.equal(first, priors[family].sample(VIEWS, generator=gen(3), steps=3))
    assert not torch.allclose(first, priors[family].sample(VIEWS, generator=gen(4), steps=3), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_different_cameras_give_different_images_from_the_same_noise(priors, family):
    # one camera per call, the same generator seed: x_T and every step's noise are the same draws
    front = priors[family].sample(cams(70.0, 60.0, 3.2), generator=gen(5), steps=3)
    back = priors[family].sample(cams(100.0, -120.0, 3.2), generator=gen(5), steps=3)
    assert float((front - back).abs().mean()) > 1e-3


@pytest.mark.parametrize("eta", [1.0, 0.0])
@pytest.mark.parametrize("family", FAMILIES)
def test_sample_is_ldm_ddim_with_classifier_free_guidance(priors, tiny_dirs, reference_image, family, eta):
    """Two DDIM steps (t = 501, 1) at scale 3 equal the re-implemented DDIMSampler on the family's vector; the
    same sampler with the guidance turned around (cond and uncond swapped) or without it does not."""
    folder, variant = ((tiny_dirs["zero123"], "fp16_ema") if family == "zero123"
                       else (tiny_dirs["stable_zero123"], None))  # the variant each prior loads by default
    model = ReferenceModel(folder, variant)
    c, v = model.get_img_embeds(reference_image)
    T = threestudio_vector(VIEWS, REF, stable=family == "stable-zero123")
    ours = priors[family].sample(VIEWS, generator=gen(7), steps=2, guidance_scale=3.0, eta=eta)
    reference = ldm_ddim_sample(model, c, v, T, generator=gen(7), steps=2, scale=3.0, eta=eta)
    assert ldm_timesteps(2) == [1, 501]
    assert [int(t) for t in priors[family].sampling_scheduler(2).timesteps] == [501, 1]
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)
    swapped = ldm_ddim_sample(model, c, v, T, generator=gen(7), steps=2, scale=-2.0, eta=eta)  # 1 - 3
    unguided = ldm_ddim_sample(model, c, v, T, generator=gen(7), steps=2, scale=1.0, eta=eta)
    assert float((ours - swapped).abs().max()) > 1e-3 and float((ours - unguided).abs().max()) > 1e-3


def test_scale_one_runs_the_conditional_branch_alone_and_equals_the_formula(priors, tiny_dirs, reference_image):
    """gradio_new.py passes no unconditional conditioning at scale 1 (uc = None): one UNet call per step."""
    prior = priors["zero123"]
    calls = []
    handle = prior.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        ours = prior.sample(VIEWS, generator=gen(9), steps=2, guidance_scale=1.0)
    finally:
        handle.remove()
    assert calls == [3, 3]  # the batch, not [uncond; cond]
    model = ReferenceModel(tiny_dirs["zero123"], "fp16_ema")
    c, v = model.get_img_embeds(reference_image)
    reference = ldm_ddim_sample(model, c, v, threestudio_vector(VIEWS, REF, stable=False), generator=gen(9),
                                steps=2, scale=1.0, eta=1.0)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_the_sampling_defaults_are_zero123s_gradio_main_run_on_ldms_timesteps(priors):
    from c123.priors import zero123
    assert (zero123.SAMPLE_STEPS, zero123.SAMPLE_ETA, zero123.SAMPLE_GUIDANCE) == (50, 1.0, 3.0)
    ours = [int(t) for t in priors["zero123"].sampling_scheduler(zero123.SAMPLE_STEPS).timesteps]
    assert ours == ldm_timesteps(50)[::-1] == list(range(981, 0, -20))


def test_sample_before_set_reference_is_refused(tiny_dirs):
    from c123.priors.zero123 import Zero123Prior
    prior = Zero123Prior.from_pretrained(str(tiny_dirs["zero123"]), PriorConfig(zero123_size=SIZE), "cpu")
    with pytest.raises(RuntimeError, match="before set_reference"):
        prior.sample(VIEWS, generator=gen(0), steps=1)
