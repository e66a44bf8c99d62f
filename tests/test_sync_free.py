"""A training step does not make the host wait for the device: no host sync in a NeRF step, a few in a DMTet step
(counted on CPU by c123.sync_count, which records the ops that synchronise on CUDA)."""

import numpy as np
import pytest
import torch

import c123.config as C
from c123.cameras import orbit
from c123.nerf import NeRFField
from c123.priors.tiny import write_tiny_models
from c123.priors.loading import load_priors
from c123.reconstruct import build_dmtet_stage, build_nerf_stage, condition_priors, seed_everything
from c123.sync_count import SyncCounter, host_values
from c123.volume_render import OccupancyGrid, RaySettings, indices_of, render_nerf


def test_the_counter_sees_scalar_reads_data_dependent_shapes_and_boolean_masks():
    x = torch.rand(10)
    with SyncCounter() as count:
        x.sum().item()
        x.nonzero()
        _ = x[x > 0.5]
        host_values(x[:2])
        _ = x * 2 + 1
    assert count.syncs == 4
    assert {"_local_scalar_dense.default", "nonzero.default", "index.Tensor (boolean mask)", "host_values"} \
        <= set(count.reasons)


def test_indices_of_is_nonzero_without_the_sync():
    mask = torch.rand(1000) > 0.7
    torch.testing.assert_close(indices_of(mask, int(mask.sum())), mask.nonzero().squeeze(1))
    assert indices_of(torch.zeros(5, dtype=torch.bool), 0).numel() == 0


def test_masked_and_compacted_occupancy_render_the_same_image():
    torch.manual_seed(0)
    cfg = C.tiny().nerf
    field = NeRFField(cfg)
    cams = orbit(2, polar=80.0)
    images = {}
    for mode in ("compact", "mask"):
        grid = OccupancyGrid(cfg.bound, 16, 1e3, mode=mode)  # occupied: above the mean density
        grid.update(field, torch.Generator().manual_seed(1))
        out = render_nerf(field, cams, 12, 12, RaySettings("lambertian", 16, 8, need_normals=True),
                          occupancy=grid, generator=torch.Generator().manual_seed(2))
        assert 0 < grid.mask.float().mean() < 1  # some cells are empty: the modes differ in what they evaluate
        images[mode] = out
    torch.testing.assert_close(images["mask"].rgb, images["compact"].rgb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(images["mask"].normal, images["compact"].normal, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = C.tiny(str(tmp_path_factory.mktemp("models")))
    write_tiny_models(cfg.prior.zero123_model.rsplit("/", 1)[0])
    cfg.schedule.variant = "fixed-switch"  # both priors, no detector
    cfg.nerf.occupancy_mode = "mask"  # what 'auto' picks on CUDA with checkpointed chunks (paper, fast)
    yy, xx = np.mgrid[:64, :64] / 63 * 2 - 1
    rgba = torch.zeros(1, 4, 64, 64)
    rgba[0, 0], rgba[0, 3] = 0.8, torch.from_numpy((xx ** 2 + yy ** 2 < 0.5).astype(np.float32))
    depth = torch.from_numpy(np.clip(0.5 - xx ** 2 - yy ** 2, 0, None).astype(np.float32))[None, None]
    gen = seed_everything(0, "cpu")
    priors = load_priors(cfg, "cpu")
    condition_priors(priors, rgba, "a red ball", cfg, "cpu")
    built = build_nerf_stage(rgba, depth, priors, "a red ball", cfg, gen, "cpu")
    built.occupancy.update(built.field, gen)
    return cfg, built, rgba, priors, gen


def syncs_of(stage, step: int, reference: bool) -> SyncCounter:
    with SyncCounter() as count:
        stage.before_step(step)
        stage.backward_and_step(sum(stage.loss_terms(step, reference, 0.5, 0.5).values()))
    return count


def test_a_nerf_step_with_both_priors_makes_no_host_sync(tiny_run):
    cfg, built, *_ = tiny_run
    for step, reference in ((cfg.train.ref_every * 5, True), (cfg.train.ref_every * 5 + 1, False)):
        count = syncs_of(built.stage, step, reference)
        assert count.syncs == 0, (reference, dict(count.reasons))
        assert count.ops > 100  # the counter saw the step


def test_a_dmtet_step_makes_at_most_five_host_syncs(tiny_run):
    cfg, built, rgba, priors, gen = tiny_run
    _, stage = build_dmtet_stage(built, rgba, priors, cfg, gen, "cpu")
    first = cfg.train.nerf_iters + cfg.train.ref_every
    for step, reference in ((first, True), (first + 1, False)):
        count = syncs_of(stage, step, reference)
        assert 0 < count.syncs <= 5, (reference, dict(count.reasons))
