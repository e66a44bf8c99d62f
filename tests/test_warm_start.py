"""Ray and the actors started ahead of the flow run (tasks/warm_start.py): the actors load the priors before
their first case, the flow run made for them takes them, any other run or none releases them, and `c123
evaluate` started that way finishes with nothing left running."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from pipeline_support import DATA, FAST, needs_data, ray_cluster

pytestmark = pytest.mark.timeout(600)


def tiny_config() -> dict:
    from c123.config_files import resolve_config

    return resolve_config("tiny", "consistent123", 0, FAST).to_dict()


def probe_jobs(tmp_path, n: int):
    from c123_pipeline.tasks.actors import Job
    from pipeline_faults import ProbeCase

    return [Job(i, ProbeCase(f"c{i}"), "consistent123", 0, {}, str(tmp_path / f"c{i}"), "k") for i in range(n)]


def test_an_actor_loads_the_priors_of_the_warm_config_before_its_first_case(tmp_path):
    from c123_pipeline.tasks.actors import ActorPool

    ray_cluster()
    held = {}
    for warm in (tiny_config(), None):
        with ActorPool(1, resources={"num_cpus": 1, "num_gpus": 0}, work_fn="pipeline_faults:priors_held",
                       warm_config=warm) as pool:
            [(_job, outcome)] = list(pool.run(probe_jobs(tmp_path, 1)))
        assert outcome.status == "ok", outcome.error
        held[warm is not None] = outcome.result["priors_held"]
    assert held == {True: 1, False: 0}


def test_a_warm_start_for_other_parameters_is_released_not_taken(tmp_path):
    from c123_pipeline.flows.spec import BenchmarkSpec
    from c123_pipeline.tasks import warm_start

    ray_cluster()
    start = warm_start.WarmStart(2, "pipeline_faults:priors_held", 2, jobs=2, config=None).begin()
    cluster, pool = start.ready(timeout=120)
    assert pool.num_actors == 2 and not cluster.started  # joined the tests' cluster: not its to stop
    assert warm_start.take(BenchmarkSpec(num_actors=1, work_fn="pipeline_faults:priors_held")) is None
    start.keeper.join(timeout=60)
    assert not start.keeper.is_alive() and pool.actors == []  # its actors are gone
    assert warm_start.take(BenchmarkSpec(num_actors=2, work_fn="pipeline_faults:priors_held")) is None


def test_a_warm_start_no_run_takes_is_released_and_no_longer_pending():
    from c123_pipeline.flows.spec import BenchmarkSpec
    from c123_pipeline.tasks import warm_start

    ray_cluster()
    start = warm_start.WarmStart(1, "pipeline_faults:priors_held", 2, jobs=1, config=None).begin()
    stopper = start.release()  # what leaving `c123 evaluate`'s started_ahead block does
    assert stopper is start.keeper
    stopper.join(timeout=60)
    assert not stopper.is_alive()
    assert warm_start.take(BenchmarkSpec(num_actors=1, work_fn="pipeline_faults:priors_held")) is None


@needs_data
def test_the_flow_run_takes_the_actors_started_ahead_and_trims_them_to_its_cases(tmp_path):
    from c123_pipeline.flows.benchmark import benchmark
    from c123_pipeline.flows.spec import BenchmarkSpec
    from c123_pipeline.tasks import warm_start

    ray_cluster()
    spec = BenchmarkSpec(dataset="c10", preset="tiny", cases=["07"], out=str(tmp_path / "run"), overrides=FAST,
                         data_root=str(DATA), num_actors=2)
    start = warm_start.WarmStart(2, None, spec.max_retries, jobs=2, config=tiny_config()).begin()
    summary = benchmark(**{k: getattr(spec, k) for k in spec.__dataclass_fields__})
    assert summary["ok"] == 1 and summary["started_ahead"] is True
    assert summary["actors"] == 1  # one case: the second actor started ahead was let go
    start.keeper.join(timeout=60)
    assert not start.keeper.is_alive() and warm_start.take(spec) is None


@needs_data
def test_evaluate_started_ahead_finishes_and_leaves_nothing_running(tmp_path):
    """`c123 evaluate` in its own process: its cluster is started by a background thread (whose end would kill
    Ray's processes, were it not kept alive), runs the case, and is stopped with everything it started."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("RAY_ADDRESS", None)
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "c123_pipeline.cli", "evaluate", "c10", "--preset", "tiny",
                             "--cases", "07", "--data-root", str(DATA), "--actors", "1", "--out", str(out),
                             "--set", *FAST], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, tuple[psutil.Process, str]] = {}
    while proc.poll() is None:  # what the driver starts, as it runs
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.pid not in seen:
                    seen[child.pid] = (child, " ".join(child.cmdline()[:3]))
        except psutil.Error:
            pass
        time.sleep(0.5)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "1 ok, 0 failed (0 reused, 1 computed)" in stdout
    assert any("raylet" in line for _p, line in seen.values()), [line for _p, line in seen.values()]
    deadline = time.time() + 30
    while (alive := [line for p, line in seen.values() if _running(p)]) and time.time() < deadline:
        time.sleep(0.5)
    assert alive == []


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
