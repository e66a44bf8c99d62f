"""The verification benchmark: the synthetic scenes reconstructed with the oracle as the 3D prior (preset
`verify`) through the real flow (Prefect API, Ray actors), its metrics against the true object, its report
(true views beside reconstructed ones, in Chromium), the summary `make demo` prints, and the CPU nightly's
verdict on deliberate breakages."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest

from browser import load_page, needs_chromium
from pipeline_support import ray_cluster

pytestmark = pytest.mark.timeout(1800)

GROUND_TRUTH = ["novel_psnr", "novel_lpips", "unseen_psnr", "chamfer_sq", "fscore", "silhouette_iou"]
CUT_DOWN = ["train.nerf_iters=12", "train.dmtet_iters=4", "train.checkpoint_every=4", "train.eval_views=4",
            "train.eval_size=48", "train.video_frames=4", "train.texture_size=64", "train.nerf_size=32",
            "dmtet.tet_resolution=32", "dmtet.render_size=48"]
"""The verify preset cut to a few steps: every stage, output and metric runs, in seconds on CPU."""


def _verify_run(out: Path, cases, overrides=None, **kw) -> dict:
    from c123_pipeline.flows.benchmark import benchmark

    ray_cluster()
    return benchmark(dataset="synthetic", preset="verify", cases=cases, out=str(out), overrides=overrides,
                     num_actors=1, **kw)


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The cut-down verify run of the mug (the concavity) done twice, in two run folders."""
    root = tmp_path_factory.mktemp("verify")
    return [(_verify_run(root / name, ["mug"], CUT_DOWN), root / name) for name in ("a", "b")]


def test_same_code_and_seed_give_identical_ground_truth_metrics(twice):
    """Two runs of the same code and seed: per_case and per_view metrics equal to the bit, all computed."""
    (first, a), (second, b) = twice
    assert first["computed"] == second["computed"] == 1 and first["failed"] == 0
    cases = [pd.read_parquet(s["per_case"]) for s in (first, second)]
    columns = ["clip_similarity", "psnr", "lpips", *GROUND_TRUTH, "metric_status", "cache_key"]
    pd.testing.assert_frame_equal(cases[0][columns], cases[1][columns], check_exact=True)
    row = cases[0].iloc[0]
    assert row["metric_status"] == "ok" and row["variant"] == "3d-only" and row["preset"] == "verify"
    assert all(math.isfinite(row[m]) for m in GROUND_TRUTH)
    assert 0 <= row["fscore"] <= 1 and 0 < row["silhouette_iou"] <= 1
    views = [pd.read_parquet(s["per_view"])[["view_index", "novel_psnr", "silhouette_iou"]] for s in (first, second)]
    pd.testing.assert_frame_equal(views[0], views[1], check_exact=True)
    # the oracle followed the case: its model id names the mug
    result = json.loads((a / row["case_dir"] / "result.json").read_text())
    assert result["model_ids"]["zero123"] == "oracle:mug"


def test_demo_summary_names_each_case_and_explains_the_oracle(twice, capsys):
    from c123_pipeline.reports.verify import main

    (_, run), _ = twice
    assert main([str(run)]) == 0
    text = capsys.readouterr().out
    mug = next(line for line in text.splitlines() if line.startswith("mug"))
    per_case = pd.read_parquet(run / "per_case.parquet").iloc[0]
    assert f"{per_case['novel_psnr']:.2f}" in mug and f"{per_case['fscore']:.3f}" in mug
    assert "ORACLE" in text and "`paper` preset" in text and str(run / "report" / "index.html") in text


@needs_chromium
def test_report_shows_true_views_beside_the_reconstructed_ones_in_chromium(twice, tmp_path):
    """The report's ground-truth section: per case, each orbit view's true image above the reconstructed one;
    every image loads in Chromium (screenshot in tmp_path)."""
    (_, run), _ = twice
    page = run / "report" / "index.html"
    html = page.read_text()
    section = html[html.index('<section id="truth">'):]
    pairs = re.findall(r'<figure class="pair"[^>]*><img class="truth" src="([^"]+)"[^>]*>'
                       r'<img class="recon" src="([^"]+)"', section)
    assert len(pairs) == 4  # the cut-down run's 4 orbit views
    for truth, recon in pairs:
        assert unquote(truth).replace("/truth/", "/views/") == unquote(recon)
        assert (page.parent / unquote(truth)).is_file() and (page.parent / unquote(recon)).is_file()
    shot = tmp_path / "verify-report.png"
    dom, errors = load_page(page, shot)
    assert not errors, errors
    assert not dom["broken_images"] and not dom["pending_images"], dom
    assert dom["images"] >= 2 * len(pairs)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    print(f"verify report screenshot: {shot}")


def test_verify_preset_refuses_a_dataset_without_ground_truth(tmp_path):
    """The oracle answers with the case's own scene: a photo dataset is refused before anything runs."""
    from c123.config import verify
    from c123.errors import C123Error
    from c123_pipeline.datasets.case import Case
    from c123_pipeline.flows.spec import case_config

    with pytest.raises(C123Error, match="use the dataset synthetic"):
        case_config(verify(str(tmp_path)), Case(id="07", rgba_path=tmp_path / "07.png"))
    assert case_config(verify(str(tmp_path)), Case(id="mug", rgba_path=tmp_path / "m.png", scene="mug")
                       ).prior.oracle_scene == "mug"


# ---- the CPU nightly's verdict -----------------------------------------------------------------------
def _rows(run_id: str, values: dict[str, dict[str, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": run_id, "dataset": "synthetic", "case": case, "variant": "3d-only",
                          "weight_shape": "exp", "seed": 0, "status": "ok", "error": None, **metrics}
                         for case, metrics in values.items()])


def test_nightly_thresholds_pass_equal_numbers_and_flag_each_kind_of_drop():
    """The verdict under VERIFY_THRESHOLDS: identical numbers pass; a drop of any one ground-truth metric, several
    times smaller than what each breakage of test_each_deliberate_breakage_is_flagged costs (docs/METHOD.md
    section 6: at least 3.3 dB, 0.12 F-score, 0.08 IoU), flags that metric alone."""
    from c123_pipeline.reports.regression import compare
    from c123_pipeline.reports.verify import VERIFY_THRESHOLDS

    good = {"toy": dict(novel_psnr=27.0, unseen_psnr=26.0, chamfer_sq=4e-4, fscore=0.55, silhouette_iou=0.95),
            "chair": dict(novel_psnr=24.0, unseen_psnr=23.5, chamfer_sq=6e-4, fscore=0.45, silhouette_iou=0.85)}
    base = _rows("base", good)
    assert not compare(_rows("same", good), base, VERIFY_THRESHOLDS).regressed
    for metric, worse in (("unseen_psnr", -0.6), ("novel_psnr", -0.6), ("fscore", -0.03),
                          ("silhouette_iou", -0.015), ("chamfer_sq", +1.5e-4)):
        current = {case: {**m, metric: m[metric] + worse} for case, m in good.items()}
        verdict = compare(_rows("cur", current), base, VERIFY_THRESHOLDS)
        assert verdict.regressed, metric
        assert [f.metric for f in verdict.findings if f.regressed] == [metric]


# ---- slow: demo-sized runs -----------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_reconstructs_every_scene_with_unseen_sides_above_22_db(tmp_path):
    """`make demo`'s run (every synthetic scene, the verify preset as shipped): the unseen sides come back."""
    summary = _verify_run(tmp_path / "demo", None)
    per_case = pd.read_parquet(summary["per_case"])
    print(per_case[["case", *GROUND_TRUTH, "seconds_total"]].to_string())
    assert set(per_case["case"]) == {"toy", "blocks", "chair", "mug"} and (per_case["status"] == "ok").all()
    assert (per_case["unseen_psnr"] >= 22).all() and (per_case["silhouette_iou"] >= 0.8).all()
    assert (per_case["fscore"] >= 0.3).all()


@pytest.mark.slow
def test_each_deliberate_breakage_is_flagged_by_the_nightly_verdict(tmp_path):
    """A baseline verify run of the chair (thin parts); a rerun of the same code is not flagged; a mirrored
    camera convention, an untrained DMTet stage and a halved learning rate each are (verdict.json of the run's
    report, under the nightly's thresholds, through the real flow)."""
    from c123.config import verify
    from c123_pipeline.reports.verify import VERIFY_THRESHOLDS

    base = tmp_path / "base"
    _verify_run(base, ["chair"])
    lr = verify().train.lr
    runs = {"same code": {}, "mirrored camera": {"work_fn": "verify_breakages:mirrored_camera_convention"},
            "untrained DMTet": {"work_fn": "verify_breakages:untrained_dmtet_stage"},
            "halved lr": {"overrides": [f"train.lr={lr / 2}"]}}
    verdicts = {}
    for name, kw in runs.items():
        out = tmp_path / name.replace(" ", "-")
        _verify_run(out, ["chair"], baseline=str(base), thresholds=dict(VERIFY_THRESHOLDS), **kw)
        verdicts[name] = json.loads((out / "report" / "verdict.json").read_text())
        print(name, [(f["metric"], f["baseline"], f["current"]) for f in verdicts[name]["findings"]])
    assert not verdicts.pop("same code")["regressed"]
    for name, verdict in verdicts.items():
        assert verdict["regressed"], name
