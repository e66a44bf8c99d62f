"""Run folders on object storage: the benchmark flow against an S3 server on 127.0.0.1 (moto, started here),
the store's atomic writes, and the one-line errors for an unknown scheme or missing credentials."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_support import DATA, FAST, needs_data
from storage_support import environ, s3, s3_server

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def s3env(tmp_path_factory):
    with s3_server(tmp_path_factory.mktemp("moto")) as env:
        yield env


def _evaluate(out: str, env: dict, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    """`c123 evaluate` as a user runs it, in its own process (its own Prefect API and Ray cluster)."""
    import os

    c123 = Path(sys.executable).with_name("c123")
    return subprocess.run([str(c123), "evaluate", "c10", "--preset", "tiny", "--cases", "07", "--data-root",
                           str(DATA), "--out", out, "--actors", "1", "--set", *FAST, *extra],
                          env={**os.environ, **env}, cwd=cwd, capture_output=True, text=True, timeout=800)


@needs_data
def test_benchmark_writes_its_run_folder_to_s3_and_a_rerun_is_served_from_it(s3env, tmp_path):
    import pandas as pd

    url = "s3://c123-runs/nightly/c10-tiny"
    first = _evaluate(url, s3env, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "1 ok, 0 failed (0 reused, 1 computed)" in first.stdout
    assert f"per_case: {url}/per_case.parquet" in first.stdout
    fs = s3(s3env)
    case = "c123-runs/nightly/c10-tiny/cases/consistent123/07/seed0"
    stored = {p[len(case) + 1:] for p in fs.find(case)}
    assert {"result.json", "cache_key", "metrics.json", "reference.png", "mesh/mesh.obj"} <= stored
    assert not any(p.startswith("checkpoints/") for p in stored)  # resume state stays on the node's disk
    assert not [p for p in fs.find("c123-runs") if Path(p).name.startswith(".")]  # no temp object left over
    per_case = pd.read_parquet(io.BytesIO(fs.cat_file("c123-runs/nightly/c10-tiny/per_case.parquet")))
    assert list(per_case["case"]) == ["07"] and (per_case["status"] == "ok").all()
    assert per_case["psnr"].notna().all() and per_case["clip_similarity"].notna().all()
    assert per_case["node_id"].notna().all()
    assert fs.isfile("c123-runs/nightly/c10-tiny/report/index.html")
    assert json.loads(fs.cat_file("c123-runs/nightly/c10-tiny/run.json"))["dataset"] == "c10"
    assert not list(tmp_path.glob("s3*")), "a local folder was written instead of the bucket"

    key_before = fs.cat_file(f"{case}/cache_key")
    second = _evaluate(url, s3env, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "1 ok, 0 failed (1 reused, 0 computed)" in second.stdout
    again = pd.read_parquet(io.BytesIO(fs.cat_file("c123-runs/nightly/c10-tiny/per_case.parquet")))
    assert again["psnr"].tolist() == per_case["psnr"].tolist()
    assert again["node_id"].isna().all()  # nothing computed: every row came from the bucket
    assert fs.cat_file(f"{case}/cache_key") == key_before


@needs_data
@pytest.mark.parametrize("out, expected", [
    ("xyz://bucket/run", "error: run folder xyz://bucket/run: unknown storage scheme 'xyz'"),
    ("s3://c123-runs/run", "error: run folder s3://c123-runs/run: no credentials for it: set AWS_ACCESS_KEY_ID"),
    ("s3://no-such-bucket/run", "error: run folder s3://no-such-bucket/run: its bucket does not exist"),
    ("memory://c123-runs/run", "error: run folder memory://c123-runs/run: memory:// lives in this process's memory "
                               "and would vanish when the command exits"),
])
def test_a_run_folder_url_that_cannot_be_used_is_one_line(s3env, tmp_path, capsys, monkeypatch, out, expected):
    import s3fs

    from c123_pipeline.cli import main

    monkeypatch.chdir(tmp_path)
    values = dict(s3env)
    if "no credentials" in expected:
        values.update(AWS_ACCESS_KEY_ID=None, AWS_SECRET_ACCESS_KEY=None, AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                      AWS_CONFIG_FILE="/nonexistent", AWS_PROFILE=None)
    s3fs.S3FileSystem.clear_instance_cache()
    with environ(values):
        code = main(["evaluate", "c10", "--preset", "tiny", "--cases", "07", "--data-root", str(DATA),
                     "--out", out, "--set", *FAST])
    s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(expected), err
    assert not list(tmp_path.iterdir())  # nothing written locally (no folder named 'xyz:' or 's3:')


def test_atomic_writes_to_a_url_leave_only_the_finished_object():
    import fsspec

    from c123.atomic import write_atomic
    from c123_pipeline.tasks import storage

    fs = fsspec.filesystem("memory")
    write_atomic("memory://atomic-test/run/run.json", '{"a": 1}')
    write_atomic("memory://atomic-test/run/run.json", '{"a": 2}')
    assert fs.find("/atomic-test") == ["/atomic-test/run/run.json"]
    assert storage.read_json_object("memory://atomic-test/run/run.json") == {"a": 2}
    assert storage.read_json_object("memory://atomic-test/run/absent.json") == {}


def test_case_paths_stay_inside_a_url_run_folder():
    from c123.errors import C123Error
    from c123_pipeline.tasks.run_folder import inside

    assert inside("s3://b/run", "cases/consistent123/07/seed0") == "s3://b/run/cases/consistent123/07/seed0"
    for bad in ("../other", "cases/../../x", "/abs"):
        with pytest.raises(C123Error, match="leaves the run folder"):
            inside("s3://b/run", bad)


def test_baseline_latest_is_found_beside_a_url_run_folder():
    """The nightly's baseline='latest' with $C123_RUNS on object storage: the newest earlier run of the same
    dataset and preset in the same prefix, read back through a local copy of its tables."""
    from c123_pipeline.tasks import results, storage
    from c123_pipeline.tasks.report import check_baseline, find_latest_baseline
    from test_pipeline_schema import _row

    root = "memory://baseline-test/runs"
    for name, dataset, created in (("old", "c10", "2026-01-01"), ("newer", "c10", "2026-02-01"),
                                   ("other", "realfusion15", "2026-03-01")):
        storage.write(f"{root}/{name}/run.json", json.dumps({"dataset": dataset, "preset": "tiny",
                                                             "created_at": created}))
        results.write_parquet(results.frame([_row(dataset=dataset, run_id=name)], results.CaseRow),
                              f"{root}/{name}/per_case.parquet", results.PER_CASE_SCHEMA)
    storage.write(f"{root}/now/run.json", json.dumps({"dataset": "c10", "preset": "tiny"}))
    assert find_latest_baseline(f"{root}/now", "c10", "tiny") == "memory:///baseline-test/runs/newer"
    assert check_baseline("latest", f"{root}/now", "c10", "tiny", ["07"]) == "memory:///baseline-test/runs/newer"
