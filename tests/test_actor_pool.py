"""The actor pool's tail: once no case waits, CPU actors still computing take over the idle actors' threads."""

from __future__ import annotations

import pytest

from pipeline_support import ray_cluster

pytestmark = pytest.mark.timeout(600)  # threads_seen waits up to 300 s for the thread


def test_tail_threads_share_the_idle_actors_cpus_among_the_busy_ones():
    from c123_pipeline.tasks.actors import tail_threads

    assert tail_threads(1, running=1, idle=1) == 2
    assert tail_threads(1, running=2, idle=1) == 1  # 3 CPUs over 2 busy actors: no whole thread to give
    assert tail_threads(2, running=1, idle=3) == 8
    assert tail_threads(1, running=3, idle=0) == 1


def test_last_running_case_gets_the_idle_actors_thread_and_the_next_case_starts_at_one(tmp_path):
    from c123_pipeline.tasks.actors import ActorPool, Job
    from pipeline_faults import ProbeCase

    ray_cluster()
    jobs = [Job(i, ProbeCase(c), "consistent123", 0, {}, str(tmp_path / c), "k") for i, c in
            enumerate(["long", "short"])]
    with ActorPool(2, resources={"num_cpus": 1, "num_gpus": 0}, work_fn="pipeline_faults:threads_seen",
                   share_idle_threads=True) as pool:
        outcomes = {job.case_id: outcome for job, outcome in pool.run(jobs)}
        assert all(o.status == "ok" for o in outcomes.values()), outcomes
        seen = {c: o.result["threads"] for c, o in outcomes.items()}
        assert seen == {"short": 1, "long": 2}
        # two cases on two actors: none idle, so both (also on the actor that had two threads) run at one
        after = [Job(2 + i, ProbeCase(c), "consistent123", 0, {}, str(tmp_path / c), "k") for i, c in
                 enumerate(["after1", "after2"])]
        assert sorted(outcome.result["threads"] for _job, outcome in pool.run(after)) == [1, 1]


def test_by_default_a_running_case_keeps_its_thread_count():
    """Without share_idle_threads the pool asks no actor to change threads, however many are idle: a case's float
    rounding must not depend on when the others finished (identical runs give identical rows)."""
    from c123_pipeline.tasks.actors import ActorPool

    class Actor:
        def __init__(self):
            self.asked = []
            self.set_threads = self

        def remote(self, token, n):
            self.asked.append((token, n))

    for share, asked in ((False, []), (True, [(7, 2)])):
        pool = ActorPool(2, resources={"num_cpus": 1, "num_gpus": 0}, share_idle_threads=share)
        pool.actors, pool._token = [Actor(), Actor()], {0: 7}
        pool._rebalance({"ref": (0, None, 0.0)}, idle=[1])
        assert pool.actors[0].asked == asked, share


def test_thread_request_that_arrives_before_its_case_starts_is_kept_for_that_case_only(tmp_path):
    """The pool's request names the dispatch; it may reach the actor before `run` does (other method group)."""
    import ray

    from c123_pipeline.tasks.actors import Job, ReconstructionActor
    from pipeline_faults import ProbeCase

    ray_cluster()
    actor = ReconstructionActor.options(num_cpus=1).remote("pipeline_faults:threads_seen", 1)
    try:
        ray.get(actor.set_threads.remote(7, 2))
        long = ray.get(actor.run.remote(Job(0, ProbeCase("long"), "consistent123", 0, {}, str(tmp_path / "l"), "k"), 7))
        other = ray.get(actor.run.remote(Job(1, ProbeCase("short"), "consistent123", 0, {}, str(tmp_path / "s"), "k"), 8))
    finally:
        ray.kill(actor)
    assert (long.result["threads"], other.result["threads"]) == (2, 1)
