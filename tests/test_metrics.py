"""Metrics: PSNR by hand, LPIPS equal to the lpips package, CLIP similarity properties, Chamfer values."""

import math
import time

import numpy as np
import pytest
import torch

from c123.errors import WeightsMissingError
from c123.metrics import (PROTOCOLS, ClipSimilarity, LpipsMetric, MetricProtocol, chamfer_squared, composite_white,
                          fscore, psnr, silhouette_iou)


def test_composite_white_arrays_tensors_and_uint8():
    rgba = np.array([[[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.5]]])
    expected = np.array([[[1, 0, 0], [1, 1, 1], [0.5, 0.5, 1.0]]])
    assert np.allclose(composite_white(rgba), expected)
    assert torch.allclose(composite_white(torch.tensor(rgba)), torch.tensor(expected))
    assert np.allclose(composite_white((rgba * 255).astype(np.uint8)), expected, atol=1 / 255)


def test_psnr_matches_a_hand_computation():
    target = np.zeros((2, 2, 3))
    pred = target.copy()
    pred[0, 0, 0] = 0.1                     # mse = 0.01 / 12
    assert psnr(pred, target) == pytest.approx(10 * math.log10(12 / 0.01))
    assert psnr(torch.tensor(pred), torch.tensor(target)) == pytest.approx(30.7918, abs=1e-4)
    assert psnr(target, target) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(pred, np.zeros((2, 3, 3)))
    pred[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        psnr(pred, target)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_lpips_equals_the_lpips_package_with_the_same_random_backbone():
    import lpips

    rng = np.random.default_rng(0)
    a = rng.random((64, 64, 3), dtype=np.float32)
    b = np.clip(a + 0.2 * rng.standard_normal((64, 64, 3)), 0, 1).astype(np.float32)
    torch.manual_seed(0)
    ours = LpipsMetric("alex", "cpu", random_backbone=True)
    torch.manual_seed(0)
    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    to_torch = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None] * 2 - 1
    expected = reference(to_torch(a), to_torch(b)).item()
    assert expected > 0
    assert ours(a, b) == pytest.approx(expected, rel=1e-5)
    assert ours(a, a) == pytest.approx(0, abs=1e-7)
    assert ours.name == "alex-random"
    with pytest.raises(ValueError, match="NaN"):
        ours(a, np.full_like(a, np.nan))


def test_lpips_without_cached_backbone_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(WeightsMissingError, match=r"alexnet-owt-7be5be79\.pth.*TORCH_HOME"):
        LpipsMetric("alex")
    assert time.perf_counter() - start < 1.0


@pytest.fixture(scope="module")
def clip_similarity(tmp_path_factory):
    from c123.priors.tiny import write_tiny_models

    return ClipSimilarity(write_tiny_models(tmp_path_factory.mktemp("tiny"))["clip"], "cpu", batch_size=2)


def test_clip_similarity_identical_images_and_symmetry(clip_similarity):
    rng = np.random.default_rng(0)
    ref, other = rng.random((2, 48, 48, 3))
    views = np.stack([ref, other, rng.random((48, 48, 3))])
    mean, per_view = clip_similarity(ref, views)
    assert per_view.shape == (3,) and mean == pytest.approx(per_view.mean())
    assert per_view[0] == pytest.approx(1.0, abs=1e-5)
    forward = clip_similarity(ref, other[None])[1][0]
    backward = clip_similarity(other, ref[None])[1][0]
    assert forward == pytest.approx(backward, abs=1e-6) and forward < 1 - 1e-4
    with pytest.raises(ValueError, match="NaN"):
        clip_similarity(ref, np.full((1, 48, 48, 3), np.nan))


def test_clip_similarity_missing_model_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsMissingError, match="CLIP"):
        ClipSimilarity(str(tmp_path / "missing-clip"), "cpu")


def test_chamfer_identical_and_shifted_sets():
    grid = np.stack(np.meshgrid(*[np.arange(5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert chamfer_squared(grid, grid) == 0
    # a shift of 0.1 (< half the spacing) keeps every nearest neighbour: 0.1^2 each way
    assert chamfer_squared(grid, grid + [0.1, 0, 0]) == pytest.approx(0.02)
    assert chamfer_squared(torch.tensor(grid), torch.tensor(grid[:1])) == pytest.approx(
        np.mean((grid ** 2).sum(1)))            # one point at the origin: its own 0 + mean |x|^2
    with pytest.raises(ValueError, match="non-empty"):
        chamfer_squared(grid, np.zeros((0, 3)))


def test_fscore_counts_points_within_the_distance_both_ways():
    grid = np.stack(np.meshgrid(*[np.arange(5.0) * 0.1] * 3, indexing="ij"), -1).reshape(-1, 3)
    assert fscore(grid, grid) == 1.0
    assert fscore(grid, grid + [0.005, 0, 0]) == 1.0          # within the 0.01 default
    assert fscore(grid, grid + [0.02, 0, 0]) == 0.0           # nothing within reach: a real 0, not a failure
    # half of the prediction is the truth, half far away: precision 0.5, recall 1 -> 2/3
    assert fscore(np.concatenate([grid, grid + 10.0]), grid) == pytest.approx(2 / 3)
    assert fscore(grid, grid + [0.02, 0, 0], distance=0.03) == 1.0
    with pytest.raises(ValueError, match="fscore: need two non-empty"):
        fscore(grid, np.zeros((0, 3)))


def test_silhouette_iou_of_known_masks():
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:, :2], b[:, 1:3] = 1.0, 0.9                            # 4 shared pixels of 12 covered
    assert silhouette_iou(a, b) == pytest.approx(4 / 12)
    assert silhouette_iou(a, a) == 1.0
    assert silhouette_iou(a, np.full((4, 4), 0.4)) == 0.0    # below the 0.5 threshold: empty
    with pytest.raises(ValueError, match="both silhouettes are empty"):
        silhouette_iou(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="shapes differ"):
        silhouette_iou(a, np.zeros((4, 5)))


def test_metric_protocols_c123_default_and_magic123():
    default = PROTOCOLS["c123"]
    assert (default.clip_model, default.num_views, default.background, default.resize, default.lpips_net) == (
        None, None, "white", "none", "alex")   # the preset's CLIP over the views the reconstruction writes
    magic = PROTOCOLS["magic123"]
    assert magic.clip_model == "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k" and magic.num_views == 100
    assert (magic.clip_size, magic.lpips_size, magic.psnr_size) == (224, 224, 800)
    assert magic.background == "white-where-transparent" and magic.resize == "area"
    assert isinstance(MetricProtocol("x"), MetricProtocol)


def test_area_resize_is_opencv_inter_area():
    """Shrinking averages the covered pixels (fractionally at borders); enlarging repeats pixels and blends
    only across a border, as cv2.resize(..., interpolation=cv2.INTER_AREA) does (values worked by hand)."""
    from c123.metrics import area_resize

    block = (np.arange(16, dtype=np.uint8).reshape(4, 4, 1) * 10)
    assert area_resize(block, 2)[..., 0].tolist() == [[25, 45], [105, 125]]        # 2x2 means
    row = np.array([[[0], [30], [60]]], np.uint8).repeat(3, 0)                    # 3 -> 2: weights 2/3, 1/3
    assert area_resize(row, 2)[0, :, 0].tolist() == [10, 50]
    two = np.array([[[10], [20]]], np.uint8).repeat(2, 0)
    assert area_resize(two, 4)[0, :, 0].tolist() == [10, 10, 20, 20]             # x2: nearest
    assert area_resize(two, 3)[0, :, 0].tolist() == [10, 15, 20]                 # x1.5: one blended pixel


def test_magic123_reads_images_white_only_where_transparent():
    from c123.metrics import PROTOCOLS

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 0, 0)      # transparent: white
    rgba[0, 1] = (200, 100, 0, 128)    # half transparent: its colour as stored (not blended)
    rgba[1, :] = (0, 0, 250, 255)
    magic = PROTOCOLS["magic123"].image(rgba)
    assert np.allclose(magic[0, 0], 1) and np.allclose(magic[0, 1] * 255, (200, 100, 0))
    default = PROTOCOLS["c123"].image(rgba)
    assert np.allclose(default[0, 1], composite_white(rgba)[0, 1])   # c123 composites on white
    assert PROTOCOLS["magic123"].image(rgba, 4).shape == (4, 4, 3)


@pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")
def test_the_random_lpips_backbone_is_the_same_in_every_load():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 32, 32, 3), dtype=np.float32)
    torch.manual_seed(123)
    first = LpipsMetric("alex", "cpu", random_backbone=True)(a, b)
    torch.rand(1000)  # whatever happened to the global generator before, the backbone is drawn alike
    second = LpipsMetric("alex", "cpu", random_backbone=True)(a, b)
    assert first == second and first > 0
