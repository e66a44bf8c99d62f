"""The benchmark flow end to end on CPU: real Prefect API (temporary local server), real local Ray cluster,
real tiny-preset reconstructions on the shared RealFusion15 and C10 folders; then a cached rerun."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from browser import assert_report_renders, needs_chromium
from pipeline_support import DATA, FAST, needs_data, ray_cluster

pytestmark = [needs_data, pytest.mark.timeout(900)]

SUBSETS = {"realfusion15": ["banana", "cactus"], "c10": ["07", "SpongeBob"]}


def _mtimes(run: Path) -> dict[str, float]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob("cases/**/*")
            if p.is_file() and p.name in ("result.json", "metrics.json", "mesh.obj", "cache_key")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each dataset subset run twice into the same folder; returns {dataset: (run_dir, first, second, s1, s2, m1, m2)}."""
    from c123_pipeline.flows.benchmark import benchmark

    ray_cluster()
    out = {}
    for dataset, cases in SUBSETS.items():
        run = tmp_path_factory.mktemp(f"run-{dataset}")
        t0 = time.perf_counter()
        first = benchmark(dataset=dataset, preset="tiny", cases=cases, out=str(run), overrides=FAST,
                          data_root=str(DATA), num_actors=2)
        t1 = time.perf_counter()
        m1 = _mtimes(run)
        second = benchmark(dataset=dataset, preset="tiny", cases=cases, out=str(run), overrides=FAST,
                           data_root=str(DATA), num_actors=2)
        t2 = time.perf_counter()
        out[dataset] = (run, first, second, t1 - t0, t2 - t1, m1, _mtimes(run))
        print(f"{dataset}: first run {t1 - t0:.1f} s, cached rerun {t2 - t1:.1f} s")
    return out


@pytest.mark.parametrize("dataset", list(SUBSETS))
def test_flow_writes_case_folders_parquet_and_report(runs, dataset):
    import pandas as pd

    run, first, _, *_ = runs[dataset]
    assert first["ok"] == len(SUBSETS[dataset]) and first["failed"] == 0 and first["computed"] == 2
    info = json.loads((run / "run.json").read_text())
    for key in ("run_id", "dataset", "preset", "variants", "seeds", "code_version", "protocol", "created_at", "config"):
        assert key in info
    assert info["dataset"] == dataset and info["preset"] == "tiny" and info["seeds"] == [0]
    assert info["config"]["consistent123"]["config"]["train"]["nerf_iters"] == 8

    per_case = pd.read_parquet(run / "per_case.parquet")
    assert sorted(per_case["case"]) == sorted(SUBSETS[dataset])
    assert (per_case["status"] == "ok").all() and per_case["error"].isna().all()
    for col in ("clip_similarity", "psnr", "lpips", "seconds_total"):
        assert per_case[col].notna().all() and (per_case[col] != 0).all(), col
    assert per_case[["novel_psnr", "novel_lpips", "chamfer_sq"]].isna().all().all()  # not a synthetic dataset
    assert (per_case["metric_status"] == "ok").all()
    assert (per_case["num_views"] == 4).all() and (per_case["resolution"] == 32).all()
    assert (per_case["lpips_net"] == "alex-random").all()  # no AlexNet weights offline: the tiny fallback
    for column in ("clip_model", "num_views", "background", "lpips_net"):  # run.json says what the rows say
        assert set(per_case[column]) == {info["protocol"][column]}, column
    assert set(per_case["protocol"]) == {info["protocol"]["name"]}
    assert set(per_case["device"]) == {"cpu"} and per_case["switch_iteration"].notna().all()
    for row in per_case.itertuples():
        case_dir = run / row.case_dir
        assert row.case_dir == f"cases/consistent123/{row.case}/seed0"
        for rel in ("result.json", "reference.png", "views/ref_render.png", "views/view_003.png",
                    "mesh/mesh.obj", "mesh/mesh.glb", "video/rgb.mp4", "cache_key"):
            assert (case_dir / rel).is_file(), rel
        assert (case_dir / "cache_key").read_text().strip() == row.cache_key

    per_view = pd.read_parquet(run / "per_view.parquet")
    assert len(per_view) == 4 * len(SUBSETS[dataset])
    assert sorted(per_view["azimuth"].unique().tolist()) == [0.0, 90.0, 180.0, 270.0]
    merged = per_view.groupby("case")["clip_similarity"].mean()
    for row in per_case.itertuples():
        assert math.isclose(merged[row.case], row.clip_similarity, rel_tol=1e-6)
    assert (run / "report" / "index.html").is_file() and (run / "report" / "tables.md").is_file()


@pytest.mark.parametrize("dataset", list(SUBSETS))
def test_rerun_of_the_same_run_folder_computes_nothing(runs, dataset):
    import pandas as pd

    run, first, second, t_first, t_second, m1, m2 = runs[dataset]
    assert second["computed"] == 0 and second["cached"] == len(SUBSETS[dataset]) and second["failed"] == 0
    assert second["run_id"] == first["run_id"]
    assert m1 == m2, "a cached rerun rewrote case outputs"
    assert t_second < 0.5 * t_first, (t_first, t_second)
    per_case = pd.read_parquet(run / "per_case.parquet")
    assert (per_case["status"] == "ok").all() and per_case["psnr"].notna().all()


def test_changed_config_recomputes_only_that_variant(runs, tmp_path):
    """Another seed in the same run folder is computed; the finished seed-0 cases are reused (in a copy of the
    shared run, which the other tests read as the fixture made it, in any order)."""
    import shutil

    from c123_pipeline.flows.benchmark import benchmark

    run = tmp_path / "run"
    shutil.copytree(runs["c10"][0], run)
    summary = benchmark(dataset="c10", preset="tiny", cases=["07"], seeds=[0, 1], out=str(run), overrides=FAST,
                        data_root=str(DATA), num_actors=2)
    assert summary["cached"] == 1 and summary["computed"] == 1 and summary["failed"] == 0
    assert (run / "cases/consistent123/07/seed1/result.json").is_file()


def test_synthetic_metrics_on_a_finished_case(runs, tmp_path):
    """Novel-view PSNR/LPIPS and Chamfer against a synthetic scene, on a real output folder."""
    from c123.metrics import PROTOCOLS
    from c123_pipeline.tasks.metrics import compute_case_metrics, load_metric_models, resolve_protocol

    run, first, *_ = runs["c10"]
    case_dir = run / "cases/consistent123/07/seed0"
    result = json.loads((case_dir / "result.json").read_text())
    protocol = resolve_protocol(PROTOCOLS["c123"], result["config"]["prior"]["clip_model"], 4, tiny=True)
    models = load_metric_models(protocol, "cpu")
    values = compute_case_metrics(case_dir, result, models, scene="toy")
    for key in ("novel_psnr", "novel_lpips", "chamfer_sq", "psnr", "lpips", "clip_similarity"):
        assert math.isfinite(values[key]) and values[key] != 0, key
    assert values["metric_status"] == "ok"

    # a metric that cannot be computed is NaN with its reason, never 0
    (tmp_path / "views").mkdir()
    values = compute_case_metrics(tmp_path, {"views": [{"file": "views/view_000.png", "azimuth": 0, "polar": 90}]},
                                  models, scene="toy")
    assert all(math.isnan(values[k]) for k in ("clip_similarity", "psnr", "lpips", "chamfer_sq"))
    assert "chamfer_sq:" in values["metric_status"] and "reference:" in values["metric_status"]


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["realfusion15", "c10", "synthetic"])
def test_whole_dataset_tiny(dataset, tmp_path):
    """Every case of a dataset with the tiny preset (as shipped, no cut-down overrides)."""
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark

    ray_cluster()
    summary = benchmark(dataset=dataset, preset="tiny", out=str(tmp_path / "run"), data_root=str(DATA))
    per_case = pd.read_parquet(summary["per_case"])
    assert summary["failed"] == 0, summary["errors"]
    assert per_case[["clip_similarity", "psnr", "lpips"]].notna().all().all()
    if dataset == "synthetic":
        assert per_case[["novel_psnr", "novel_lpips", "chamfer_sq"]].notna().all().all()


def test_regression_against_a_baseline_fails_the_flow_run_and_publishes_the_verdict(runs, tmp_path):
    """The nightly path: a baseline with better PSNR -> verdict regressed -> Failed flow run + artifact."""
    import shutil

    import pandas as pd
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from c123_pipeline.flows.benchmark import benchmark
    from c123_pipeline.tasks.results import PER_CASE_SCHEMA, write_parquet

    run = shutil.copytree(runs["c10"][0], tmp_path / "run")  # the shared run stays as the fixture made it
    base = tmp_path / "baseline"
    base.mkdir()
    per_case = pd.read_parquet(run / "per_case.parquet")
    per_case = per_case[per_case["seed"] == 0].assign(psnr=lambda d: d["psnr"] + 5.0, run_id="baseline-run")
    write_parquet(per_case, base / "per_case.parquet", PER_CASE_SCHEMA)
    (base / "run.json").write_text(json.dumps({"run_id": "baseline-run", "dataset": "c10", "preset": "tiny",
                                               "created_at": "2026-01-01T00:00:00+00:00"}))
    state = benchmark(dataset="c10", preset="tiny", cases=SUBSETS["c10"], out=str(run), overrides=FAST,
                      data_root=str(DATA), baseline=str(base), fail_on_regression=True, return_state=True)
    assert state.is_failed()
    assert (run / "report" / "verdict.json").is_file()
    assert json.loads((run / "report" / "verdict.json").read_text())["regressed"] is True
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["regression-verdict"])))
        assert any(a.flow_run_id == state.state_details.flow_run_id and "REGRESSED" in a.data for a in arts)

    # the same comparison without fail_on_regression (c123 evaluate --baseline) completes and reports it
    summary = benchmark(dataset="c10", preset="tiny", cases=SUBSETS["c10"], out=str(run), overrides=FAST,
                        data_root=str(DATA), baseline=str(base))
    assert summary["regressed"] is True and summary["computed"] == 0


def test_the_nightly_drift_window_fails_a_flow_run_the_latest_baseline_passes(runs, tmp_path):
    """The nightly deployments' drift_window through the flow: five earlier nights in the runs folder, PSNR
    0.3 dB a night better than this run from the third on; against 'latest' alone the run passes, with
    drift_window=5 the flow run is Failed and the verdict names the night the decline began."""
    import shutil

    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark
    from c123_pipeline.tasks.results import PER_CASE_SCHEMA, write_parquet

    run, *_ = runs["c10"]
    now = shutil.copytree(run, tmp_path / "runs" / "now", ignore=shutil.ignore_patterns("report", ".lock*"))
    per_case = pd.read_parquet(run / "per_case.parquet")
    for n, better in enumerate((1.2, 1.2, 0.9, 0.6, 0.3)):
        night = tmp_path / "runs" / f"night{n}"
        night.mkdir()
        write_parquet(per_case.assign(psnr=per_case["psnr"] + better, run_id=f"night{n}"),
                      night / "per_case.parquet", PER_CASE_SCHEMA)
        (night / "run.json").write_text(json.dumps({"run_id": f"night{n}", "dataset": "c10", "preset": "tiny",
                                                    "created_at": f"2026-01-0{n + 1}T02:00:00+00:00"}))
    common = dict(dataset="c10", preset="tiny", cases=SUBSETS["c10"], out=str(now), overrides=FAST,
                  data_root=str(DATA), baseline="latest", fail_on_regression=True)
    passed = benchmark(**common)
    assert passed["regressed"] is False and passed["baseline"].endswith("night4") and passed["computed"] == 0
    state = benchmark(**common, drift_window=5, return_state=True)
    assert state.is_failed()
    verdict = json.loads((now / "report" / "verdict.json").read_text())
    (psnr,) = [f for f in verdict["findings"] if f["kind"] == "drift" and f["metric"] == "psnr"]
    assert psnr["regressed"] and psnr["since"] == "night2" and psnr["delta"] == pytest.approx(-1.2)
    assert "Nightly trend over 6 runs" in (now / "report" / "index.html").read_text()


def latest_flow_run(out: Path):
    """The newest flow run of this Prefect home, read from its API (checked to be the run into `out`)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run, = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert run.parameters["out"] == str(out)
    return run


def test_evaluate_with_a_failed_case_exits_1_and_its_flow_run_is_failed(runs, tmp_path, capsys):
    """`c123 evaluate` as a user runs it: one case reused, one case whose image is now garbage."""
    import shutil

    from c123_pipeline.cli import main
    from pipeline_support import copy_dataset

    root = tmp_path / "data"
    copy_dataset("c10", root / "c10")
    (root / "c10" / "SpongeBob_rgba.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 40)
    out = tmp_path / "run"
    shutil.copytree(runs["c10"][0], out)  # the finished 07 is reused
    code = main(["evaluate", "c10", "--preset", "tiny", "--cases", "07", "SpongeBob", "--data-root", str(root),
                 "--out", str(out), "--actors", "1", "--set", *FAST])
    printed = capsys.readouterr().out
    assert code == 1
    assert "1 ok, 1 failed (1 reused, 1 computed)" in printed
    assert "failed: consistent123/SpongeBob/seed0: InputError: " in printed
    assert "flow run Failed: 1 failed of 2; first: consistent123/SpongeBob/seed0: InputError:" in printed
    run = latest_flow_run(out)
    assert run.state.type.value == "FAILED"
    assert run.state.message.startswith("1 failed of 2; first: consistent123/SpongeBob/seed0: InputError: ")


def test_a_full_disk_while_writing_the_tables_is_one_line_and_keeps_the_old_tables(runs, tmp_path, capsys,
                                                                                  monkeypatch):
    import errno
    import shutil

    import pyarrow.parquet as pq

    from c123_pipeline.cli import main

    out = tmp_path / "run"
    shutil.copytree(runs["c10"][0], out)  # every case finished: the run only writes its tables and report
    before = (out / "per_case.parquet").read_bytes()

    def full(table, where, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(where))

    monkeypatch.setattr(pq, "write_table", full)
    code = main(["evaluate", "c10", "--preset", "tiny", "--cases", *SUBSETS["c10"], "--data-root", str(DATA),
                 "--out", str(out), "--set", *FAST])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"error: no space left on the device writing {out}/.per_case.parquet."), err
    assert err.endswith("free space and rerun the same command (finished work is kept)")
    assert (out / "per_case.parquet").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".per_case")]


def test_two_identical_runs_give_identical_metrics(tmp_path):
    """Same code, seed and inputs: the same per_case metric columns, to the bit (the tiny preset's LPIPS
    backbone is random but seeded)."""
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark

    columns = ["clip_similarity", "psnr", "lpips", "switch_iteration", "lpips_net", "protocol", "cache_key"]
    frames = []
    for name in ("a", "b"):
        summary = benchmark(dataset="c10", preset="tiny", cases=["07"], out=str(tmp_path / name), overrides=FAST,
                            data_root=str(DATA), num_actors=1)
        assert summary["computed"] == 1
        frames.append(pd.read_parquet(summary["per_case"])[columns])
    pd.testing.assert_frame_equal(frames[0], frames[1], check_exact=True)
    assert frames[0].loc[0, "lpips_net"] == "alex-random" and frames[0]["lpips"].notna().all()


def test_magic123_protocol_requests_its_views_and_is_recorded_alike_in_rows_and_run_json(tmp_path):
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark

    tiny_clip = str(Path(os.environ["C123_TINY_MODELS"]) / "clip")  # bigG in its real layout is not here
    out = tmp_path / "run"
    overrides = [o for o in FAST if not o.startswith("train.eval_views=")]  # the protocol asks for its 100
    summary = benchmark(dataset="c10", preset="tiny", cases=["07"], out=str(out), overrides=overrides,
                        data_root=str(DATA), num_actors=1, protocol="magic123", clip_model=tiny_clip)
    per_case = pd.read_parquet(summary["per_case"])
    row = per_case.iloc[0]
    assert row["status"] == "ok" and row["metric_status"] == "ok"
    assert (row["protocol"], row["num_views"], row["background"]) == ("magic123", 100, "white-where-transparent")
    assert len(pd.read_parquet(summary["per_view"])) == 100  # the flow asked the reconstruction for 100 views
    assert len(list((out / row["case_dir"] / "views").glob("view_*.png"))) == 100
    recorded = json.loads((out / "run.json").read_text())["protocol"]
    for column in ("clip_model", "num_views", "background", "lpips_net"):
        assert recorded[column] == row[column], column
    assert recorded["name"] == row["protocol"] and recorded["resolution"] == row["resolution"]
    assert (recorded["clip_size"], recorded["lpips_size"], recorded["psnr_size"]) == (224, 224, 800)


@pytest.mark.browser
@needs_chromium
def test_html_report_of_the_tiny_c10_run_renders_in_chromium(runs, tmp_path):
    run = runs["c10"][0]
    shot = tmp_path / "c10-report.png"
    dom = assert_report_renders(run / "report" / "index.html", shot)
    # what a reader sees: a video per finished case, every case of the run named, the per-case table shown
    assert dom["videos"] == len(SUBSETS["c10"]), dom["video_sources"]
    assert all(case in dom["text"] for case in SUBSETS["c10"]), dom["text"][:2000]
    assert "per-case metrics" in dom["text"].lower(), dom["text"][:2000]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, "the screenshot is (nearly) one flat colour"
    print(f"c10 report screenshot: {shot}; captions: {dom['captions']}")
