"""Several cases per GPU (`c123 evaluate --cases-per-gpu`): Ray fractional GPUs on a local cluster with fake GPU
resources, the per-case peak column, and the guard that refuses a packing that cannot fit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from c123.config import paper
from c123.errors import C123Error

pytestmark = pytest.mark.timeout(600)
TESTS = Path(__file__).parent

PACKED_RUN = r"""
import json, sys
from c123_pipeline.tasks.ray_cluster import ensure_ray, shutdown_ray
from c123_pipeline.tasks.actors import ActorPool, Job, pool_shape
from pipeline_faults import ProbeCase

cluster = ensure_ray(num_cpus=4, num_gpus=2)  # fake GPU resources: Ray schedules them, no CUDA behind them
n, resources = pool_shape(cluster.num_cpus, cluster.num_gpus, jobs=4, num_actors=None, cases_per_gpu=2)
jobs = [Job(i, ProbeCase(f"c{i}"), "consistent123", 0, {}, sys.argv[1] + f"/c{i}", "k") for i in range(4)]
with ActorPool(n, resources=resources, work_fn="pipeline_faults:gpu_ids_seen") as pool:
    outcomes = [outcome for _job, outcome in pool.run(jobs)]
print(json.dumps({"actors": n, "resources": resources, "results": [o.result for o in outcomes],
                  "status": [o.status for o in outcomes], "peak": [o.peak_memory_gb for o in outcomes]}))
shutdown_ray()
"""


def test_two_cases_per_gpu_put_two_actors_on_each_fake_gpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", PACKED_RUN, str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=500, cwd=tmp_path)  # its own Ray cluster, apart from the suite's
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["actors"] == 4 and out["resources"]["num_gpus"] == 0.5
    assert out["status"] == ["ok"] * 4
    by_gpu: dict[str, set] = {}
    for result in out["results"]:
        assert len(result["gpus"]) == 1  # half a GPU is one GPU id, shared
        by_gpu.setdefault(result["gpus"][0], set()).add(result["pid"])
    assert sorted(len(pids) for pids in by_gpu.values()) == [2, 2]  # two actors (processes) on each card
    assert all(p != p for p in out["peak"])  # NaN: no CUDA behind fake GPUs, so no peak is made up


def test_pool_shape_splits_each_gpu_among_its_cases():
    from c123_pipeline.tasks.actors import pool_shape

    assert pool_shape(8, 2, jobs=10, num_actors=None) == (2, {"num_gpus": 1, "num_cpus": 1})
    assert pool_shape(8, 2, jobs=10, num_actors=None, cases_per_gpu=3) == (6, {"num_gpus": 1 / 3, "num_cpus": 1})
    assert pool_shape(8, 2, jobs=4, num_actors=None, cases_per_gpu=3)[0] == 4  # no more actors than cases
    assert pool_shape(4, 0, jobs=10, num_actors=None, cases_per_gpu=3)[1]["num_gpus"] == 0  # CPU: unchanged


def test_a_packing_that_cannot_fit_is_refused_with_the_figures(monkeypatch):
    from c123 import memory
    from c123_pipeline.tasks.actors import resolve_cases_per_gpu

    config = paper().to_dict()
    need = memory.case_budget(paper()).total
    monkeypatch.setenv("C123_GPU_MEMORY_GB", str(2.5 * need / 1e9))
    assert resolve_cases_per_gpu("auto", config, num_gpus=2) == 2
    assert resolve_cases_per_gpu(2, config, num_gpus=2) == 2
    with pytest.raises(C123Error, match=r"--cases-per-gpu 3 needs 3 x .* GB per GPU.*use --cases-per-gpu 2"):
        resolve_cases_per_gpu(3, config, num_gpus=2)
    assert resolve_cases_per_gpu(3, config, num_gpus=0) == 1  # a CPU cluster: one case per actor as before


def test_evaluate_takes_cases_per_gpu_as_a_number_or_auto():
    from c123_pipeline.flows.benchmark import BenchmarkSpec
    from c123_pipeline.flows.evaluate import parser, spec_from

    assert spec_from(parser().parse_args(["c10", "--cases-per-gpu", "auto"])).cases_per_gpu == "auto"
    assert spec_from(parser().parse_args(["c10", "--cases-per-gpu", "3"])).cases_per_gpu == 3
    with pytest.raises(C123Error, match="cases-per-gpu"):
        parser().parse_args(["c10", "--cases-per-gpu", "0"])
    with pytest.raises(C123Error, match="cases_per_gpu"):
        BenchmarkSpec(cases_per_gpu="many").check()


def test_per_case_parquet_has_the_peak_memory_column():
    from c123_pipeline.tasks.results import PER_CASE_SCHEMA

    assert PER_CASE_SCHEMA.field("peak_memory_gb").type == "double"
