"""Pins the boundary detector and dynamic-prior formulas of METHOD.md sections 4-5."""

import math

import pytest

from c123.config import ScheduleConfig
from c123.errors import C123Error
from c123.schedules import (BoundaryDetector, SHAPES, detect_switch, dynamic_weights, fixed_switch_step,
                            is_check_step, prior_weights, progress_after_switch, rate_statistic)


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
    # switch at 2500 of 5000 NeRF + 5000 DMTet iterations: 7500 iterations remain
    assert progress_after_switch(2500, 2500, 10000) == 0.0
    assert progress_after_switch(6250, 2500, 10000) == pytest.approx(0.5)
    assert progress_after_switch(10000, 2500, 10000) == 1.0


def test_before_the_switch_only_the_3d_prior_acts():
    cfg = ScheduleConfig()
    assert prior_weights(100, None, 10000, cfg) == (1.0, 0.0)
    assert prior_weights(100, 2000, 10000, cfg) == (1.0, 0.0)
    w3, w2 = prior_weights(2001, 2000, 10000, cfg)
    assert 0 < w2 < 0.01 and w3 > 0.99


def test_3d_then_2d_variant_drops_the_3d_prior_after_the_switch():
    cfg = ScheduleConfig(variant="3d-then-2d", fixed_switch_step=300)
    assert fixed_switch_step(cfg) == 300
    assert prior_weights(299, 300, 1000, cfg) == (1.0, 0.0)
    assert prior_weights(300, 300, 1000, cfg) == (0.0, 1.0)


def test_variant_switch_steps():
    assert fixed_switch_step(ScheduleConfig(variant="dynamic-only")) == 0
    assert fixed_switch_step(ScheduleConfig(variant="fixed-switch", fixed_switch_step=1234)) == 1234
    assert fixed_switch_step(ScheduleConfig(variant="consistent123")) is None
    assert fixed_switch_step(ScheduleConfig(variant="3d-only")) is None
    with pytest.raises(C123Error, match="unknown variant"):
        fixed_switch_step(ScheduleConfig(variant="nope"))


def test_rate_statistic_is_absolute_mean_of_last_L_rates():
    scores = [1.0, 1.1, 1.21, 1.21 * 0.9]  # rates +0.1, +0.1, -0.1
    assert rate_statistic(scores, 3) == pytest.approx(0.1 / 3)
    assert rate_statistic(scores, 4) is None


def test_check_steps_only_inside_the_window_every_h():
    cfg = ScheduleConfig()
    steps = [s for s in range(0, 5000) if is_check_step(s, cfg)]
    assert steps[0] == 2000 and steps[1] == 2021 and steps[-1] <= 3500
    assert all(b - a == 21 for a, b in zip(steps, steps[1:]))


def test_detector_switches_when_scores_flatten():
    cfg = ScheduleConfig()
    rising = [0.20 * (1.01 ** k) for k in range(10)]        # 1% per check: R = 0.01 > delta
    flat = [rising[-1] * (1 + 1e-5 * k) for k in range(1, 10)]
    switch = detect_switch(rising + flat, cfg)
    # the first window made only of flat rates ends 5 checks into the flat part
    assert switch == cfg.check_start + (len(rising) + 4) * cfg.check_interval


def test_detector_never_switches_before_L_rates_exist():
    cfg = ScheduleConfig()
    constant = [0.3] * 40  # R = 0 from the first full window
    assert detect_switch(constant, cfg) == cfg.check_start + cfg.rate_window * cfg.check_interval


def test_detector_is_forced_at_the_end_of_the_window():
    cfg = ScheduleConfig(check_start=0, check_end=100, check_interval=10)
    growing = [0.1 * (1.05 ** k) for k in range(20)]
    assert detect_switch(growing, cfg) == 100
    det = BoundaryDetector(cfg)
    for k, s in enumerate(growing[:11]):
        det.update(k * 10, s)
    assert det.switch_iteration == 100 and det.forced


def test_detector_state_round_trips_through_a_dict():
    cfg = ScheduleConfig(check_start=0, check_interval=1)
    det = BoundaryDetector(cfg)
    for k in range(3):
        det.update(k, 0.2 + k)
    again = BoundaryDetector.from_dict(cfg, det.to_dict())
    assert again.to_dict() == det.to_dict()
