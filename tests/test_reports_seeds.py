"""Seeds and renamed columns in the reports: per-case mean ± spread across seeds, the verdict's seed tolerance,
and runs written before `chamfer` became `chamfer_sq` read under the new name."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from fixtures_runs import case_row, write_per_case


def _seeds(run_id: str, psnr_by_seed: dict[int, float], case: str = "07") -> list[dict]:
    return [case_row(run_id, case, "fruit", seed=s, psnr=p) for s, p in psnr_by_seed.items()]


def test_seed_table_gives_per_case_mean_and_spread_across_seeds():
    from c123_pipeline.reports.runs import method_labels
    from c123_pipeline.reports.tables import seed_spread, seed_table

    cases = pd.DataFrame(_seeds("r", {0: 20.0, 1: 22.0, 2: 24.0}) + _seeds("r", {0: 18.0}, case="12"))
    cases["label"] = method_labels(cases)
    spread = seed_spread(cases, ["psnr"]).set_index("case")
    assert spread.loc["07", "psnr_mean"] == 22.0 and spread.loc["07", "psnr_seed_std"] == pytest.approx(2.0)
    assert spread.loc["07", "seeds"] == 3 and math.isnan(spread.loc["12", "psnr_seed_std"])
    table = seed_table(cases)
    assert [r.label.split(" · ")[-1] for r in table.rows] == ["c10/07"]  # one seed of 12: nothing to spread
    assert any(c.text == "22.000 ± 2.000" for c in table.rows[0].cells)
    assert seed_table(pd.DataFrame(_seeds("r", {0: 20.0})).assign(label="x")) is None


def test_verdict_tolerates_a_change_within_the_baselines_seed_spread():
    from c123_pipeline.reports.regression import compare, seed_tolerance

    base = pd.DataFrame(_seeds("base", {0: 20.0, 1: 22.0, 2: 24.0}))
    assert seed_tolerance(base, "psnr") == pytest.approx(2.0)
    assert seed_tolerance(base.iloc[:1], "psnr") == 0.0  # one seed: no spread, the threshold alone judges
    within = pd.DataFrame(_seeds("cur", {0: 19.0, 1: 21.0, 2: 22.5}))  # mean 1.5 dB lower: inside 2 dB
    beyond = pd.DataFrame(_seeds("cur", {0: 17.0, 1: 19.0, 2: 21.0}))  # 3 dB lower
    assert not compare(within, base, {"psnr": 0.5}).regressed
    assert compare(beyond, base, {"psnr": 0.5}).regressed
    single = base[base["seed"] == 0]
    assert compare(within[within["seed"] == 0], single, {"psnr": 0.5}).regressed  # 1 dB with one seed


def test_runs_written_with_the_old_chamfer_column_read_as_chamfer_sq(tmp_path):
    from c123_pipeline.reports.regression import parse_thresholds
    from c123_pipeline.reports.runs import load_run

    rows = [case_row("old", "07", "fruit")]
    for r in rows:
        r["chamfer"] = r.pop("chamfer_sq")
        for m in ("sd_chamfer", "sd_volume_iou", "sd_psnr", "sd_ssim", "sd_lpips"):
            r.pop(m)
    write_per_case(tmp_path / "per_case.parquet", rows)
    per_case = load_run(tmp_path).per_case
    assert "chamfer_sq" in per_case and "chamfer" not in per_case
    assert parse_thresholds({"chamfer": 1e-4})["chamfer_sq"] == 1e-4  # a deployment saved with the old name
