"""Faults: a corrupt input becomes a failed row while the others finish; an actor killed mid-case is
replaced and the case resumes from its checkpoint; nothing finished before is lost on a rerun."""

from __future__ import annotations

import json
import math

import pytest

from pipeline_support import DATA, FAST, copy_dataset, needs_data, ray_cluster

pytestmark = [needs_data, pytest.mark.timeout(900)]

CASES = ["07", "12", "SpongeBob"]
CORRUPT, KILLED, PLAIN = CASES
KILL = "pipeline_faults:die_once_mid_case"


@pytest.fixture(scope="module")
def faulty_run(tmp_path_factory):
    """A C10 copy whose '07' image is garbage; the actor running '12' dies once mid-case."""
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark, summary_of
    from pipeline_faults import KILL_MARKER

    ray_cluster()
    data = copy_dataset("c10", tmp_path_factory.mktemp("c10-corrupt") / "c10")
    (data / f"{CORRUPT}_rgba.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not an image" * 50)
    run = tmp_path_factory.mktemp("faulty-run")
    killed_dir = run / "cases" / "consistent123" / KILLED / "seed0"
    killed_dir.mkdir(parents=True)
    (killed_dir / KILL_MARKER).write_text("die once\n")
    state = benchmark(dataset=str(data), preset="tiny", cases=CASES, out=str(run), overrides=FAST,
                      num_actors=2, work_fn=KILL, return_state=True)
    per_case = pd.read_parquet(run / "per_case.parquet").set_index("case")
    return data, run, state, summary_of(state), per_case


def test_corrupt_input_is_a_failed_row_with_a_clear_error(faulty_run):
    data, run, state, summary, per_case = faulty_run
    row = per_case.loc[CORRUPT]
    assert row["status"] == "failed"
    assert row["error"].startswith("InputError: ") and f"{CORRUPT}_rgba.png" in row["error"]
    assert "\n" not in row["error"]
    assert all(math.isnan(row[m]) for m in ("clip_similarity", "psnr", "lpips", "seconds_total"))
    assert row["metric_status"] == "not computed: case failed"
    assert summary["failed"] == 1 and summary["ok"] == 2
    assert (per_case.drop(index=CORRUPT)["status"] == "ok").all()
    assert per_case.drop(index=CORRUPT)["psnr"].notna().all()


def api_state(state):
    """The final state of a flow run as the Prefect API has it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).state


def test_partly_failed_run_is_failed_in_the_prefect_api_after_writing_the_others(faulty_run):
    data, run, state, summary, per_case = faulty_run
    final = api_state(state)
    assert final.type.value == "FAILED", final
    assert final.message.startswith("1 failed of 3; first: consistent123/07/seed0: InputError: "), final.message
    assert "\n" not in final.message
    # the Parquet files and the report of the cases that succeeded were written first
    assert (per_case["status"] == "ok").sum() == 2 and (run / "report" / "index.html").is_file()


def test_all_failed_run_is_failed_in_the_prefect_api(tmp_path):
    import pandas as pd

    from c123_pipeline.flows.benchmark import benchmark

    ray_cluster()
    state = benchmark(dataset="c10", preset="tiny", cases=["07", "12"], out=str(tmp_path / "run"), overrides=FAST,
                      data_root=str(DATA), num_actors=1, work_fn="pipeline_faults:refuse_input", return_state=True)
    final = api_state(state)
    assert final.type.value == "FAILED"
    assert final.message.startswith("2 failed of 2; first: consistent123/07/seed0: InputError: 07: refused")
    per_case = pd.read_parquet(tmp_path / "run" / "per_case.parquet")
    assert (per_case["status"] == "failed").all() and per_case["psnr"].isna().all()


def test_killed_actor_is_replaced_and_the_case_resumes(faulty_run):
    data, run, state, summary, per_case = faulty_run
    assert summary["actors_replaced"] >= 1
    assert per_case.loc[KILLED, "status"] == "ok"
    case_dir = run / per_case.loc[KILLED, "case_dir"]
    result = json.loads((case_dir / "result.json").read_text())
    assert result["resumed_from"] == 4  # the checkpoint written before the actor died was used
    assert not (case_dir / "KILL_ACTOR").exists()


def test_rerun_keeps_finished_cases_and_retries_the_failed_one(faulty_run):
    from c123_pipeline.flows.benchmark import benchmark, summary_of

    data, run, state, summary, per_case = faulty_run
    stamp = {c: (run / per_case.loc[c, "case_dir"] / "result.json").stat().st_mtime_ns for c in (KILLED, PLAIN)}
    state = benchmark(dataset=str(data), preset="tiny", cases=CASES, out=str(run), overrides=FAST, num_actors=2,
                      allow_failures=1, return_state=True)
    again = summary_of(state)
    assert again["cached"] == 2 and again["computed"] == 1 and again["failed"] == 1
    assert api_state(state).type.value == "COMPLETED"  # one failure is allowed here
    assert {c: (run / per_case.loc[c, "case_dir"] / "result.json").stat().st_mtime_ns for c in stamp} == stamp


def test_pool_retries_dead_actors_but_not_permanent_errors(tmp_path):
    """An actor that dies on every attempt: 1 + max_retries attempts, then a failed outcome naming the death;
    an exception raised by the case: one attempt."""
    from c123_pipeline.tasks.actors import ActorPool, Job
    from pipeline_faults import ProbeCase

    ray_cluster()
    jobs = [Job(0, ProbeCase("x"), "consistent123", 0, {}, str(tmp_path / "x"), "k")]
    with ActorPool(1, resources={"num_cpus": 1, "num_gpus": 0}, work_fn="pipeline_faults:always_die",
                   max_retries=1) as pool:
        (job, outcome), = list(pool.run(jobs))
        assert pool.replaced == 2
    assert outcome.status == "failed" and outcome.attempts == 2
    assert "died" in outcome.error and "\n" not in outcome.error

    # an error the case raises itself is permanent: recorded at once, not retried
    with ActorPool(1, resources={"num_cpus": 1, "num_gpus": 0}, work_fn="pipeline_faults:raise_runtime_error",
                   max_retries=2) as pool:
        (job, outcome), = list(pool.run(jobs))
        assert pool.replaced == 0
    assert outcome.attempts == 1 and outcome.error.startswith("RuntimeError: boom in the work function")
    assert not outcome.retryable


def test_ray_cluster_is_loopback_only_and_workers_keep_home():
    import os

    import ray

    from c123_pipeline.tasks.ray_cluster import ray_home

    info = ray_cluster()
    assert info.address.startswith("127.0.0.1:")
    assert (ray_home() / "ray_bootstrap_config.yaml").read_text() == "{}\n"  # no cloud-metadata probe

    @ray.remote(num_cpus=0)
    def worker_env():
        return os.environ.get("HOME"), os.environ.get("RAY_USAGE_STATS_ENABLED")

    assert ray.get(worker_env.remote()) == (os.environ["HOME"], "0")
