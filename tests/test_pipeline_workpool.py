"""The work-pool path beside `serve`: prefect.yaml holds the same four deployments as flows/deployments.py, and
a deployment run goes through a process work pool and a worker to Completed, as a user would run it
(`prefect work-pool create`, `prefect deploy --all`, `prefect worker start`, `prefect deployment run`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_support import DATA, FAST, REPO, SESSION, api_get, free_port, needs_data

PREFECT = Path(sys.executable).with_name("prefect")
POOL = "c123-process"


def _yaml_deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def test_prefect_yaml_holds_the_served_deployments():
    """Same names, entrypoint, parameters, tags, schedule and overlap rule as `serve`; all on the process pool."""
    from c123_pipeline.flows.deployments import build_deployments

    in_yaml = _yaml_deployments()
    served = {d.name: d for d in build_deployments()}
    assert set(in_yaml) == set(served) == {"evaluate-c10", "evaluate-realfusion15", "nightly-regression",
                                             "nightly-verify"}
    for name, dep in served.items():
        spec = in_yaml[name]
        assert spec["entrypoint"] == "c123_pipeline.flows.benchmark:benchmark"  # the module path, as serve's
        assert dep.entrypoint == "c123_pipeline.flows.benchmark.benchmark"
        assert spec["parameters"] == dep.parameters and sorted(spec["tags"]) == sorted(dep.tags)
        assert spec["description"] == dep.description
        assert [s["cron"] for s in spec.get("schedules", [])] == [s.schedule.cron for s in dep.schedules or []]
        assert spec["work_pool"]["name"] == POOL
    for name in ("nightly-regression", "nightly-verify"):
        assert served[name].parameters["drift_window"] >= 1  # judged against the history too (slow drift)
        limit, nightly = in_yaml[name]["concurrency_limit"], served[name]
        assert (limit["limit"], limit["collision_strategy"]) == (nightly.concurrency_limit,
                                                                 nightly.concurrency_options.collision_strategy.value)


@needs_data
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_deployment_run_through_a_process_work_pool_and_worker_completes(tmp_path):
    import pandas as pd

    from c123_pipeline.flows.serve import start_server, stop_server

    home = SESSION / "prefect-workpool"
    port = free_port()
    server = start_server("127.0.0.1", port, home)
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("RAY_ADDRESS", None)  # the flow run starts its own local cluster on the worker's machine
    worker = None
    try:
        def prefect(*args, timeout=300):
            proc = subprocess.run([str(PREFECT), *args], env=env, cwd=REPO, capture_output=True, text=True,
                                  timeout=timeout)
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
            return proc

        prefect("work-pool", "create", POOL, "--type", "process")
        prefect("--no-prompt", "deploy", "--all")
        for name in _yaml_deployments():
            assert api_get(f"{api}/deployments/name/benchmark/{name}")["work_pool_name"] == POOL
        worker = subprocess.Popen([str(PREFECT), "worker", "start", "--pool", POOL, "--name", "test-worker"], env=env,
                                  cwd=tmp_path, stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT,
                                  start_new_session=True)
        out = tmp_path / "run"
        params = {"preset": "tiny", "cases": ["07"], "overrides": FAST, "out": str(out), "num_actors": 1,
                  "data_root": str(DATA)}
        run = prefect("deployment", "run", "benchmark/evaluate-c10", "--params", json.dumps(params), "--watch",
                      "--watch-timeout", "600", timeout=700)
        flow_run_id = run.stdout.split("UUID: ", 1)[1].split()[0]
        flow_run = api_get(f"{api}/flow_runs/{flow_run_id}")
        assert flow_run["state"]["type"] == "COMPLETED"
        assert flow_run["work_pool_name"] == POOL
        assert f"Worker 'test-worker' submitting flow run '{flow_run_id}'" in (tmp_path / "worker.log").read_text()
        per_case = pd.read_parquet(out / "per_case.parquet")
        assert list(per_case["case"]) == ["07"] and (per_case["status"] == "ok").all()
        assert per_case["psnr"].notna().all()
    finally:
        if worker is not None:
            try:
                os.killpg(worker.pid, signal.SIGINT)  # a worker stops on SIGINT, not SIGTERM
                worker.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(worker.pid, signal.SIGKILL)
        stop_server(server)
