"""The NeRF-stage losses as the authors' code computes them (nerf/utils.py train_step, renderer.py run_cuda),
checked against hand computations, and the reference step that runs them."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from c123 import config as C
from c123 import losses, stages
from c123.cameras import reference_camera
from c123.nerf import NeRFField
from c123.volume_render import RaySettings, render_nerf


def test_entropy_is_over_per_sample_weights_clamped_and_averaged():
    w = torch.tensor([[0.0, 0.5, 1.0], [0.25, 0.75, 0.1]])
    a = w.clamp(1e-5, 1 - 1e-5)
    expected = (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a)).mean()
    assert torch.allclose(losses.entropy_loss(w), expected)
    valid = torch.tensor([[False, True, False], [True, True, True]])   # skipped samples do not exist
    assert torch.allclose(losses.entropy_loss(w, valid), (-a * torch.log2(a) - (1 - a) * torch.log2(1 - a))[valid].mean())


def test_orientation_is_a_mean_over_samples_of_detached_weight_times_backfacing_squared():
    w = torch.tensor([[0.2, 0.8], [0.5, 0.0]], requires_grad=True)
    n = F.normalize(torch.tensor([[[0.0, 0, 1], [0, 1, 1]], [[0, 0, -1], [1, 0, 0]]]), dim=-1).requires_grad_()
    d = torch.tensor([[0.0, 0, 1], [0, 0, 1]])
    loss = losses.orientation_loss(w, n, d)
    expected = (0.2 * 1.0 + 0.8 * 0.5 + 0.5 * 0.0 + 0.0) / 4   # n.d = 1, 1/sqrt2 (squared 0.5), -1 -> 0, 0
    assert float(loss.detach()) == pytest.approx(expected)
    loss.backward()
    assert w.grad is None and n.grad is not None   # the weights are detached: only the normals move


def gaussian_blur_9(img: torch.Tensor) -> torch.Tensor:
    """torchvision's default sigma for kernel 9 (0.3 * ((9 - 1) * 0.5 - 1) + 0.8) with reflect padding."""
    sigma = 0.3 * ((9 - 1) * 0.5 - 1) + 0.8
    x = torch.arange(9, dtype=img.dtype) - 4
    k = torch.exp(-x ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = img.shape[1]
    padded = F.pad(img, (4, 4, 4, 4), mode="reflect")
    out = F.conv2d(padded, k.view(1, 1, 1, 9).expand(c, 1, 1, 9), groups=c)
    return F.conv2d(out, k.view(1, 1, 9, 1).expand(c, 1, 9, 1), groups=c)


def test_2d_normal_smoothness_is_mse_to_its_9px_blur_plus_finite_differences():
    gen = torch.Generator().manual_seed(0)
    img = torch.rand(1, 16, 16, 3, generator=gen)
    chw = img.permute(0, 3, 1, 2)
    expected = (F.mse_loss(chw, gaussian_blur_9(chw))
                + (img[:, 1:] - img[:, :-1]).square().mean() + (img[:, :, 1:] - img[:, :, :-1]).square().mean())
    assert float(losses.normal_smoothness_2d(img)) == pytest.approx(float(expected), rel=1e-5)


def test_3d_normal_smoothness_is_the_mean_absolute_difference():
    n = F.normalize(torch.randn(10, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    m = F.normalize(n + 0.1, dim=-1)
    assert float(losses.normal_smoothness_3d(n, m)) == pytest.approx(float((n - m).abs().mean()))


def test_reference_mask_is_binary_at_half_alpha_and_rgb_targets_white_composited_by_it():
    alpha = torch.tensor([[[0.2], [0.6]]])
    mask = losses.reference_mask(alpha, 0.5)
    assert mask.tolist() == [[[0.0], [1.0]]]
    white = torch.tensor([[[0.9, 0.9, 0.9], [0.1, 0.2, 0.3]]])
    bg = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])   # a different colour per pixel
    pred = torch.tensor([[[1.0, 0.0, 0.0], [0.1, 0.2, 0.3]]])
    assert float(losses.reference_rgb_loss(pred, white, mask, bg)) == 0.0


def tiny_stage(tmp_path, **train):
    cfg = C.tiny(str(tmp_path / "models"))
    cfg.nerf.occupancy_grid = False
    for k, v in train.items():
        setattr(cfg.train, k, v)
    field = NeRFField(cfg.nerf)
    rgba = torch.zeros(1, 4, 48, 48)
    rgba[:, :, 12:36, 12:36] = torch.tensor([0.8, 0.4, 0.2, 1.0])[:, None, None]
    gen = torch.Generator().manual_seed(0)
    parts = stages.NerfStage(field, rgba, None, None, cfg, gen, "cpu")
    return cfg, field, parts


def test_reference_steps_are_shaded_so_the_normal_regularisers_act_on_them_too(tmp_path):
    cfg, _, stage = tiny_stage(tmp_path)
    terms = stage.loss_terms(4, True, 1.0, 0.0)
    assert {"ref_rgb", "ref_mask", "entropy", "orientation", "normal_3d", "normal_2d"} <= set(terms)
    _, _, albedo_stage = tiny_stage(tmp_path, ref_shading="albedo")
    assert "normal_2d" not in albedo_stage.loss_terms(4, True, 1.0, 0.0)


def test_one_part_of_a_stage_can_be_replaced_alone_and_the_loop_sees_the_replacement(tmp_path):
    _, _, parts = tiny_stage(tmp_path)
    state = parts.gen.get_state()
    full = parts.loss_terms(4, True, 1.0, 0.0)
    parts.gen.set_state(state)
    parts.regularisers = lambda out, step: {"constant": torch.tensor(0.25)}
    stage = parts.build()   # the training loop's view: it calls the replaced part
    replaced = stage.loss_terms(4, True, 1.0, 0.0)
    assert set(full) - set(replaced) == {"entropy", "orientation", "normal_3d", "normal_2d"}
    assert set(replaced) == {"ref_rgb", "ref_mask", "constant"} and float(replaced["constant"]) == 0.25
    for name in ("ref_rgb", "ref_mask"):   # the untouched parts give the same numbers as before
        assert torch.equal(replaced[name], full[name]), name


def test_entropy_is_ramped_by_min_1_2_step_over_iters(tmp_path):
    cfg, field, parts = tiny_stage(tmp_path)
    out = render_nerf(field, reference_camera(cfg.camera), 8, 8,
                      RaySettings("lambertian", cfg.nerf.num_samples, need_normals=True),
                      generator=torch.Generator().manual_seed(0))
    iters = cfg.train.nerf_iters
    for step, ramp in ((6, 2 * 6 / iters), (iters // 2, 1.0)):
        terms = parts.regularisers(out, step)
        expected = cfg.loss.entropy * ramp * float(losses.entropy_loss(out.weights).detach())
        assert float(terms["entropy"].detach()) == pytest.approx(expected, rel=1e-6)


def test_reference_background_is_noise_per_pixel_and_rays_are_jittered():
    cfg = C.tiny()
    bg = stages.reference_background(cfg, 16, torch.Generator().manual_seed(0), "cpu")
    assert bg.shape == (1, 16, 16, 3) and bg.std() > 0.2
    cfg.train.ref_background = "flat"
    assert stages.reference_background(cfg, 16, torch.Generator().manual_seed(0), "cpu").shape == (3,)
    field = NeRFField(cfg.nerf)
    cam = reference_camera(cfg.camera)
    plain = render_nerf(field, cam, 8, 8, RaySettings(num_samples=8, perturb=False))
    jitter = (torch.full((3,), 2e-3), torch.full((3,), -2e-3))
    moved = render_nerf(field, cam, 8, 8, RaySettings(num_samples=8, perturb=False), ray_jitter=jitter)
    assert not torch.equal(plain.rays_d, moved.rays_d)
    assert torch.allclose(moved.rays_d.norm(dim=-1), torch.ones(64))


def test_the_detector_renders_at_the_official_size_then_area_resizes_for_clip(tmp_path, monkeypatch):
    from c123.priors.clip import ClipModel
    from c123.priors.tiny import write_tiny_models

    cfg = C.tiny(str(tmp_path / "models"))
    cfg.schedule.render_size = 40
    paths = write_tiny_models(tmp_path / "models")
    clip = ClipModel.from_pretrained(str(paths["clip"]), "cpu")
    sizes, seen = [], []
    real_render = stages.render_nerf

    def spy_render(field, cams, h, w, settings, **kw):
        sizes.append((len(cams), h, w, settings.perturb))
        return real_render(field, cams, h, w, settings, **kw)

    real_embeds = clip.image_embeds
    monkeypatch.setattr(stages, "render_nerf", spy_render)
    monkeypatch.setattr(clip, "image_embeds",
                        lambda images, resize: seen.append((images.shape, resize)) or real_embeds(images, resize))
    score = stages.DetectorScore(type("P", (), {"clip": clip})(), "a cactus", cfg, "cpu")
    value = score(NeRFField(cfg.nerf), None)
    assert math.isfinite(value)
    assert sizes == [(cfg.schedule.num_views, 40, 40, False)]
    assert seen == [((cfg.schedule.num_views, 3, cfg.prior.clip_size, cfg.prior.clip_size), "bilinear")]
