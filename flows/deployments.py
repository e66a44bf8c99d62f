"""Deployments of the `benchmark` flow, and `serve()` to run them from this process.

- `benchmark/evaluate-c10`, `benchmark/evaluate-realfusion15`: on-demand evaluations (parameters as the
  flow's; `prefect deployment run benchmark/evaluate-c10 --param preset=tiny --param cases='["07"]'`).
- `benchmark/nightly-regression`: cron (default "0 2 * * *", UTC), at most one run at a time (a run due
  while one is going is cancelled, not queued); judged against the newest earlier nightly run
  (baseline='latest') and against the median of the last DRIFT_WINDOW good earlier runs (drift_window: a slow
  decline, reports/drift.py); a regression fails the flow run and publishes the verdict as a markdown artifact.
- `benchmark/nightly-verify`: the CPU nightly (default "0 3 * * *"): the synthetic scenes with the oracle
  prior (preset `verify`), judged like nightly-regression under the thresholds of
  reports/verify.py, which a broken camera convention, an untrained DMTet stage or a halved learning rate
  each exceed.

Every flow run whose cases failed (more than its `allow_failures`) ends Failed, so
`prefect deployment run ... --watch` exits non-zero.

Serve against the server PREFECT_API_URL names: `python -m c123_pipeline.flows.deployments` (see flows/serve.py and
scripts/serve.sh for a local server plus the deployments in one command).
"""

from __future__ import annotations

import argparse
import os

# Prefect (and the flow, which imports it) is imported inside the functions: flows/serve.py and main() set
# PREFECT_HOME / PREFECT_API_URL first, which Prefect reads as it is imported.
NIGHTLY_CRON = "0 2 * * *"
DRIFT_WINDOW = 5
"""The nightlies also judge each run against the median of the last DRIFT_WINDOW good earlier runs
(reports/drift.py): a decline of 0.3 dB a night passes the night-to-night verdict but not this one."""
VERIFY_CRON = "0 3 * * *"


def build_deployments(nightly_cron: str = NIGHTLY_CRON, nightly_dataset: str = "c10", nightly_preset: str = "fast",
                      nightly_overrides: list[str] | None = None, preset: str = "paper",
                      verify_cron: str = VERIFY_CRON) -> list:
    """The four RunnerDeployments of the `benchmark` flow."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    from c123_pipeline.flows.benchmark import benchmark
    from c123_pipeline.reports.verify import VERIFY_THRESHOLDS

    common = dict(entrypoint_type=EntrypointType.MODULE_PATH, tags=["c123", "benchmark"])
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    return [
        benchmark.to_deployment(name="evaluate-c10", parameters={"dataset": "c10", "preset": preset},
                                description="Benchmark C10 (10 public cases)", **common),
        benchmark.to_deployment(name="evaluate-realfusion15", parameters={"dataset": "realfusion15", "preset": preset},
                                description="Benchmark RealFusion15", **common),
        benchmark.to_deployment(
            name="nightly-regression", cron=nightly_cron, concurrency_limit=one_at_a_time,
            parameters={"dataset": nightly_dataset, "preset": nightly_preset, "baseline": "latest",
                        "drift_window": DRIFT_WINDOW, "fail_on_regression": True,
                        "overrides": list(nightly_overrides or [])},
            description="Nightly benchmark judged against the previous nightly run and the median of the last "
                        f"{DRIFT_WINDOW} good ones (slow drift); fails on a regression",
            **{**common, "tags": ["c123", "benchmark", "nightly"]}),
        benchmark.to_deployment(
            name="nightly-verify", cron=verify_cron, concurrency_limit=one_at_a_time,
            parameters={"dataset": "synthetic", "preset": "verify", "baseline": "latest", "protocol": "syncdreamer",
                        "drift_window": DRIFT_WINDOW, "fail_on_regression": True,
                        "thresholds": dict(VERIFY_THRESHOLDS)},
            description="CPU nightly: the synthetic scenes with the oracle prior (numbers with a right answer), "
                        f"judged against the previous run and the median of the last {DRIFT_WINDOW} good ones; "
                        "fails on a regression",
            **{**common, "tags": ["c123", "benchmark", "nightly", "cpu"]}),
    ]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", default=os.environ.get("C123_RUNS", "runs"),
                   help="folder or URL (s3://bucket/runs) that receives run folders of runs without an explicit `out` "
                        "(default ./runs)")
    p.add_argument("--preset", default="paper", help="default preset of the evaluate-* deployments")
    p.add_argument("--nightly-cron", default=NIGHTLY_CRON, help=f"cron of nightly-regression (default '{NIGHTLY_CRON}')")
    p.add_argument("--nightly-dataset", default="c10")
    p.add_argument("--nightly-preset", default="fast")
    p.add_argument("--verify-cron", default=VERIFY_CRON, help=f"cron of nightly-verify (default '{VERIFY_CRON}')")
    p.add_argument("--nightly-set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides of the nightly run")
    p.add_argument("--limit", type=int, default=1, help="flow runs at a time (default 1: a run uses the machine)")


def serve_deployments(args: argparse.Namespace) -> None:
    """Register the deployments with the API in PREFECT_API_URL and execute their runs until interrupted."""
    from prefect import serve

    from c123.provenance import offline_defaults

    from c123_pipeline.tasks import storage

    os.environ["C123_RUNS"] = str(storage.output_location(args.runs))  # a folder or a URL (s3://bucket/runs)
    offline_defaults()
    deployments = build_deployments(args.nightly_cron, args.nightly_dataset, args.nightly_preset, args.nightly_set,
                                    args.preset, args.verify_cron)
    serve(*deployments, limit=args.limit)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m c123_pipeline.flows.deployments",
                                description="Serve the benchmark deployments (PREFECT_API_URL names the server).")
    add_arguments(p)
    args = p.parse_args(argv)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    serve_deployments(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
