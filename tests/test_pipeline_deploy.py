"""Triggered as a user would: a real `prefect server start` on loopback, the deployments served from a
subprocess, and `prefect deployment run benchmark/evaluate-c10 --watch` with a small case subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_support import DATA, FAST, REPO, SESSION, api_get, free_port, needs_data, ray_cluster

pytestmark = [needs_data, pytest.mark.timeout(900)]

DEPLOYMENTS = ("evaluate-c10", "evaluate-realfusion15", "nightly-regression", "nightly-verify")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(api_url, env, runs_dir): a Prefect server and the served deployments, stopped afterwards."""
    from c123_pipeline.flows.serve import start_server, stop_server

    cluster = ray_cluster()  # the served runs join this cluster instead of starting their own
    home = SESSION / "prefect-server"
    port = free_port()
    server = start_server("127.0.0.1", port, home)
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "RAY_ADDRESS": cluster.address,
           "PREFECT_LOGGING_LEVEL": "INFO"}
    runs = tmp_path_factory.mktemp("served-runs")
    log = open(runs / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "flows.deployments", "--runs", str(runs), "--preset", "tiny"],
                             cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 240
        # serve registers its deployments one by one: wait for all of them
        while any(api_get(f"{api}/deployments/name/benchmark/{name}") is None for name in DEPLOYMENTS):
            assert serve.poll() is None, (runs / "serve.log").read_text()[-3000:]
            assert time.time() < deadline, "deployments not registered"
            time.sleep(1)
        yield api, env, runs
    finally:
        stop_server(serve)
        stop_server(server)


def test_deployments_are_registered_with_schedule_and_no_overlap(served):
    api, env, runs = served
    names = {d: api_get(f"{api}/deployments/name/benchmark/{d}") for d in DEPLOYMENTS}
    assert all(names.values())
    nightly = names["nightly-regression"]
    assert [s["schedule"]["cron"] for s in nightly["schedules"]] == ["0 2 * * *"]
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    assert nightly["parameters"]["fail_on_regression"] is True and nightly["parameters"]["baseline"] == "latest"
    verify = names["nightly-verify"]  # the CPU nightly: oracle-prior reconstructions of the synthetic scenes
    assert [s["schedule"]["cron"] for s in verify["schedules"]] == ["0 3 * * *"]
    assert (verify["parameters"]["dataset"], verify["parameters"]["preset"]) == ("synthetic", "verify")
    assert verify["parameters"]["fail_on_regression"] is True and verify["parameters"]["thresholds"]["unseen_psnr"] > 0
    assert names["evaluate-c10"]["parameters"]["dataset"] == "c10"
    assert not names["evaluate-c10"]["schedules"]


def test_prefect_deployment_run_evaluate_c10(served, tmp_path):
    import pandas as pd

    api, env, runs = served
    out = tmp_path / "run"
    params = {"preset": "tiny", "cases": ["07"], "overrides": FAST, "out": str(out), "num_actors": 1,
              "data_root": str(DATA)}
    prefect = Path(sys.executable).with_name("prefect")
    t0 = time.perf_counter()
    proc = subprocess.run([str(prefect), "deployment", "run", "benchmark/evaluate-c10", "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "600"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=700)
    print(f"deployment run: {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + (runs / "serve.log").read_text()[-3000:]
    assert "Completed" in proc.stdout
    per_case = pd.read_parquet(out / "per_case.parquet")
    assert list(per_case["case"]) == ["07"] and (per_case["status"] == "ok").all()
    assert per_case["psnr"].notna().all()
    assert (out / "per_view.parquet").is_file() and (out / "report" / "index.html").is_file()
    assert json.loads((out / "run.json").read_text())["dataset"] == "c10"


def test_a_deployment_run_whose_cases_fail_is_failed_and_watch_exits_1(served, tmp_path):
    """Every case fails (its input is refused): the flow run ends Failed, as the API says, and
    `prefect deployment run --watch` exits 1 (it used to say "finished successfully in 'Completed'")."""
    import re

    api, env, runs = served
    out = tmp_path / "run"
    params = {"preset": "tiny", "cases": ["07", "12"], "overrides": FAST, "out": str(out), "num_actors": 1,
              "data_root": str(DATA), "work_fn": "pipeline_faults:refuse_input"}
    prefect = Path(sys.executable).with_name("prefect")
    proc = subprocess.run([str(prefect), "deployment", "run", "benchmark/evaluate-c10", "--params", json.dumps(params),
                           "--watch", "--watch-timeout", "600"], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=700)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Flow run finished in state 'Failed'" in proc.stdout + proc.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout).group(1)
    state = api_get(f"{api}/flow_runs/{flow_run_id}")["state"]
    assert state["type"] == "FAILED"
    assert state["message"].startswith("2 failed of 2; first: consistent123/07/seed0: InputError: 07: refused")
    assert (out / "per_case.parquet").is_file() and (out / "report" / "index.html").is_file()
