"""Pins the boundary detector and dynamic-prior formulas against the authors' train_step (1-based steps)."""

import math

import pytest

from c123.config import ScheduleConfig
from c123.errors import C123Error
from c123.schedules import (SHAPES, BoundaryDetector, detect_switch, dynamic_weights, is_score_step, may_decide,
                            planned_switch, prior_weights, progress_after_switch, rate_statistic)


@pytest.mark.parametrize("shape,at_half,at_end", [
    ("exp", 1 - math.exp(-0.5), 1 - math.exp(-1)),
    ("linear", 0.5, 1.0),
    ("log", math.log2(1.5), 1.0),
])
def test_weight_shapes_at_r_0_half_1(shape, at_half, at_end):
    m = 1e-5
    w3, w2 = dynamic_weights(0.0, SHAPES[shape], m)
    assert (w3, w2) == pytest.approx((1.0, m))
    w3, w2 = dynamic_weights(0.5, SHAPES[shape], m)
    assert w2 == pytest.approx(m + (1 - m) * at_half) and w3 == pytest.approx(1 - (1 - m) * at_half)
    w3, w2 = dynamic_weights(1.0, SHAPES[shape], m)
    assert w2 == pytest.approx(m + (1 - m) * at_end) and w3 == pytest.approx(1 - (1 - m) * at_end)


def test_exponential_weights_end_near_037_and_063():
    w3, w2 = dynamic_weights(1.0, SHAPES["exp"])
    assert w3 == pytest.approx(0.3679, abs=1e-3) and w2 == pytest.approx(0.6321, abs=1e-3)


def test_progress_counts_nerf_and_dmtet_iterations_after_switch():
    # switch at 2500 of 5000 NeRF + 5000 DMTet iterations: 7500 iterations remain (train_step's iter_ratio)
    assert progress_after_switch(2500, 2500, 10000) == 0.0
    assert progress_after_switch(6250, 2500, 10000) == pytest.approx(0.5)
    assert progress_after_switch(10000, 2500, 10000) == 1.0


def test_up_to_and_including_the_switch_step_only_the_3d_prior_acts():
    # the official decides convergence inside a step whose loss is already zero123-only
    cfg = ScheduleConfig()
    assert prior_weights(100, None, 10000, cfg) == (1.0, 0.0)
    assert prior_weights(2000, 2000, 10000, cfg) == (1.0, 0.0)
    w3, w2 = prior_weights(2001, 2000, 10000, cfg)
    assert 0 < w2 < 0.01 and w3 > 0.99


def test_3d_then_2d_switches_at_the_nerf_to_dmtet_boundary():
    # -only3D_only2D: zero123 only in the NeRF run, SD only in the DMTet run
    cfg = ScheduleConfig(variant="3d-then-2d", fixed_switch_step=300)
    switch = planned_switch(cfg, nerf_iters=5000)
    assert switch == 5000
    assert prior_weights(5000, switch, 10000, cfg) == (1.0, 0.0)
    assert prior_weights(5001, switch, 10000, cfg) == (0.0, 1.0)


def test_variant_switch_steps():
    assert planned_switch(ScheduleConfig(variant="dynamic-only"), 5000) == 0
    assert planned_switch(ScheduleConfig(variant="fixed-switch", fixed_switch_step=1234), 5000) == 1234
    assert planned_switch(ScheduleConfig(variant="consistent123"), 5000) is None
    assert planned_switch(ScheduleConfig(variant="3d-only"), 5000) is None
    with pytest.raises(C123Error, match="unknown variant"):
        planned_switch(ScheduleConfig(variant="nope"), 5000)


def test_dynamic_only_weights_from_the_first_step_as_all_weight():
    # -all_weight: ratio = global_step / (iters + dmtet_iters) from step 1
    cfg = ScheduleConfig(variant="dynamic-only", weight_shape="linear")
    w3, w2 = prior_weights(2500, planned_switch(cfg, 5000), 10000, cfg)
    assert w2 == pytest.approx(1e-5 + (1 - 1e-5) * 0.25)


def test_rate_statistic_is_absolute_mean_of_last_L_rates():
    scores = [1.0, 1.1, 1.21, 1.21 * 0.9]  # rates +0.1, +0.1, -0.1
    assert rate_statistic(scores, 3) == pytest.approx(0.1 / 3)
    assert rate_statistic(scores, 4) is None


def test_scores_are_taken_where_the_global_step_is_a_multiple_of_21_inside_the_window():
    cfg = ScheduleConfig()
    steps = [s for s in range(1, 5001) if is_score_step(s, cfg)]
    assert steps[0] == 2016 and steps[1] == 2037 and steps[-1] == 3486   # 96*21 .. 166*21
    assert all(b - a == 21 for a, b in zip(steps, steps[1:]))


def test_decisions_start_after_least_3donly_plus_interval_times_window_on_novel_steps_only():
    # only3D_least_iters = 2000 + 21 * 5 = 2105: the first decision step is 2121 (a novel-view step)
    cfg = ScheduleConfig()
    decisions = [s for s in range(1, 5001) if may_decide(s, cfg, reference_step=s % 4 == 0)]
    assert decisions[0] == 2121
    assert 2184 not in decisions and is_score_step(2184, cfg)   # 2184 = 104*21 is a reference step (% 4 == 0)


def test_detector_switches_when_scores_flatten():
    cfg = ScheduleConfig()
    rising = [0.20 * (1.01 ** k) for k in range(10)]        # 1% per check: R = 0.01 > delta
    flat = [rising[-1] * (1 + 1e-5 * k) for k in range(1, 10)]
    switch = detect_switch(rising + flat, cfg)
    # the first window made only of flat rates ends 5 scores into the flat part
    assert switch == 2016 + (len(rising) + 4) * 21


def test_detector_waits_past_a_reference_step():
    cfg = ScheduleConfig()
    constant = [0.3] * 40  # R = 0 from the first full window, at 2121
    assert detect_switch(constant, cfg) == 2121
    # with every 4th step a reference step, 2121, 2142, 2163 are novel: the switch stays at 2121
    assert detect_switch(constant, cfg, ref_every=4) == 2121
    shifted = ScheduleConfig(check_start=2078)   # first decision step would be 2184, a reference step
    assert detect_switch(constant, shifted) == 2184
    assert detect_switch(constant, shifted, ref_every=4) == 2205


def test_detector_is_forced_at_most_3donly():
    cfg = ScheduleConfig(check_start=0, check_end=100, check_interval=10)
    growing = [0.1 * (1.05 ** k) for k in range(20)]
    assert detect_switch(growing, cfg) == 100
    det = BoundaryDetector(cfg)
    for step in range(1, 101):
        det.step(step, False, lambda: growing[step // 10])
    assert det.switch_iteration == 100 and det.forced


def test_detector_state_round_trips_through_a_dict():
    cfg = ScheduleConfig(check_start=0, check_interval=1)
    det = BoundaryDetector(cfg)
    for k in range(3):
        det.record(k, 0.2 + k)
    again = BoundaryDetector.from_dict(cfg, det.to_dict())
    assert again.to_dict() == det.to_dict()
