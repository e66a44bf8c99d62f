"""Beyond one machine, on one machine: a two-node Ray cluster on 127.0.0.1 (a head and a second node joined by
address, each with its own temp dir), the code shipped to it as packages, and the tiny C10 subset run on it with
the run folder on an S3 server (moto) instead of a shared local folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline_support import DATA, FAST, REPO, free_port, needs_data
from storage_support import s3, s3_server

pytestmark = [needs_data, pytest.mark.slow, pytest.mark.timeout(1200)]

RAY = Path(sys.executable).with_name("ray")

PROBE = """
import json, os, sys
from c123_pipeline.tasks.ray_cluster import ensure_ray
ensure_ray()
import ray

@ray.remote(num_cpus=0)
def where():
    import c123, c123_pipeline.tasks.actors as actors
    return {"c123": c123.__file__, "actors": actors.__file__, "node": ray.get_runtime_context().get_node_id()}

nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
print(json.dumps({"nodes": nodes, "code": ray.get(where.remote())}))
"""


def _cluster_auth(folder: Path) -> dict:
    """Token authentication of the test cluster, as Ray 2.60 clusters have it: one token file for the nodes,
    the probe and the driver."""
    from ray._private.authentication.authentication_token_generator import generate_new_authentication_token

    from c123.atomic import write_atomic

    token = write_atomic(folder / "auth_token", generate_new_authentication_token(), mode=0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}


def _node_env(home: Path, client_env: dict) -> dict:
    """A node's environment: no PYTHONPATH (the code must come as packages), its own HOME (with the file that
    stops Ray's cloud-metadata probe), no usage stats, the cluster's token, the store's endpoint and
    credentials (each node reaches the bucket itself)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_AUTH_TOKEN")}
    home.mkdir(exist_ok=True)
    (home / "ray_bootstrap_config.yaml").write_text("{}\n")
    env.update(client_env, HOME=str(home), RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)  # its "0" would refuse the second node
    return env


def _start_node(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                             "--num-gpus=0", "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                             f"--metrics-export-port={free_port()}", *args], env=env, cwd=tempfile.gettempdir(),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc


def _stop_node(proc: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM to the node's `ray start --block` group, then any process still holding its own temp dir."""
    import psutil

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    for p in psutil.process_iter(["pid", "cmdline"]):
        if str(temp_dir) in " ".join(p.info["cmdline"] or []):
            try:
                p.kill()
            except psutil.Error:
                pass


@pytest.fixture
def two_nodes(tmp_path):
    """(address, probe answer, client env): a head and a second node, each with its own temp dir, and an S3
    server; the client env holds the store's endpoint and credentials and the cluster's token."""
    temps = [Path(tempfile.mkdtemp(prefix="c123h", dir="/tmp")), Path(tempfile.mkdtemp(prefix="c123w", dir="/tmp"))]
    procs = []
    with s3_server(tmp_path) as s3env:
        client_env = {**s3env, **_cluster_auth(tmp_path)}  # what every process of the cluster needs
        env = _node_env(tmp_path / "node-home", client_env)
        port = free_port()
        try:
            procs.append(_start_node(["--head", f"--port={port}", f"--temp-dir={temps[0]}", "--include-dashboard=false",
                                      f"--ray-client-server-port={free_port()}"], env, tmp_path / "head.log"))
            time.sleep(5)
            procs.append(_start_node([f"--address=127.0.0.1:{port}", f"--temp-dir={temps[1]}"], env,
                                     tmp_path / "worker.log"))
            address = f"127.0.0.1:{port}"
            deadline = time.time() + 120
            while True:
                probe = _probe(address, client_env, tmp_path)
                if probe and len(probe["nodes"]) == 2:
                    break
                assert all(p.poll() is None for p in procs), (tmp_path / "head.log").read_text()[-2000:] + \
                    (tmp_path / "worker.log").read_text()[-2000:]
                assert time.time() < deadline, "the second node did not join"
                time.sleep(2)
            yield address, probe, client_env
        finally:
            for proc, temp in zip(procs, temps):
                _stop_node(proc, temp)
            for temp in temps:
                shutil.rmtree(temp, ignore_errors=True)


def _probe(address: str, client_env: dict, cwd: Path) -> dict | None:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **client_env, "RAY_ADDRESS": address},
                         cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if out.returncode == 0 and lines else None


def test_two_node_cluster_runs_the_c10_subset_with_actors_on_both_nodes_into_s3(two_nodes, tmp_path):
    import pandas as pd

    address, probe, client_env = two_nodes
    # the workers import the shipped packages (Ray's py_modules), not this checkout nor an installed copy
    for module in ("c123", "actors"):
        file = probe["code"][module]
        assert "runtime_resources" in file and not file.startswith((str(REPO), "/work/main")), file
    url = "s3://c123-runs/two-node"
    c123 = Path(sys.executable).with_name("c123")
    env = {**os.environ, **client_env, "RAY_ADDRESS": address}
    run = subprocess.run([str(c123), "evaluate", "c10", "--preset", "tiny", "--cases", "07", "SpongeBob",
                          "--data-root", str(DATA), "--out", url, "--actors", "2", "--set", *FAST],
                         env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 ok, 0 failed (0 reused, 2 computed)" in run.stdout
    fs = s3(client_env)
    per_case = pd.read_parquet(io.BytesIO(fs.cat_file("c123-runs/two-node/per_case.parquet")))
    assert sorted(per_case["case"]) == ["07", "SpongeBob"] and (per_case["status"] == "ok").all()
    assert per_case["psnr"].notna().all()
    assert set(per_case["node_id"]) == set(probe["nodes"])  # one actor on each node
    assert not list(tmp_path.glob("s3*"))  # no local run folder
    for case in ("07", "SpongeBob"):
        assert fs.isfile(f"c123-runs/two-node/cases/consistent123/{case}/seed0/cache_key")
