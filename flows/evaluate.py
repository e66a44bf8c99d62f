"""`c123 evaluate DATASET ...`: the benchmark flow in this process, with a live progress display.

Runs on Prefect's embedded defaults (a temporary local API on SQLite under $PREFECT_HOME, unless
PREFECT_API_URL names a server) and a private local Ray cluster (or the one RAY_ADDRESS names).
Rerunning with the same --out resumes: finished cases are reused, interrupted ones continue.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="c123 evaluate", description="Benchmark a dataset: reconstructions on Ray actors, metrics, "
        "Parquet tables and a report, as a Prefect flow. Rerun with the same --out to resume.")
    p.add_argument("dataset", help="realfusion15 | c10 | realfusion15-original | synthetic | a dataset folder")
    p.add_argument("--preset", default="paper", help="paper | fast | tiny (default paper)")
    p.add_argument("--variant", dest="variants", action="extend", nargs="+", metavar="V",
                   help="consistent123 (default), 3d-only, dynamic-only, fixed-switch, 3d-then-2d; "
                        "a weight shape as consistent123:linear")
    p.add_argument("--cases", action="extend", nargs="+", metavar="CASE",
                   help="only these case ids (comma-separated or several; shell wildcards)")
    p.add_argument("--seed", dest="seeds", action="extend", nargs="+", type=int, metavar="N", help="seeds (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<dataset>-<preset>-<time>); "
                   "an existing one resumes")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.nerf_iters=100")
    p.add_argument("--actors", type=int, metavar="N", help="number of Ray actors (default: one per GPU, else per CPU)")
    p.add_argument("--baseline", metavar="RUN_DIR", help="judge this run against a finished run ('latest': the "
                   "newest earlier run of the same dataset and preset beside --out)")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the named datasets (default $C123_DATA)")
    p.add_argument("--clip-model", metavar="ID", help="CLIP of the CLIP-similarity metric (default: the preset's)")
    p.add_argument("--retries", type=int, default=2, help="retries of a case whose actor died (default 2)")
    p.add_argument("--verbose", "-v", action="store_true", help="show Prefect's and the actors' logs")
    return p


def _prepare_env(verbose: bool) -> None:
    """Embedded defaults, set before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if os.environ.get("C123_ALLOW_DOWNLOAD") == "1" else "1")
    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("C123_RAY_LOG_TO_DRIVER", "0")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars


class _Display:
    """A rich live view: overall cases done, and one line per busy actor (case, stage, step)."""

    def __init__(self):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description:<34}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=self.console)
        self.overall = self.progress.add_task("cases", total=None, info="starting")
        self.slots: dict[int, int] = {}

    def __call__(self, snap: dict) -> None:
        info = f"{snap['failed']} failed" + (f", {snap['replaced']} actors replaced" if snap.get("replaced") else "")
        self.progress.update(self.overall, total=snap["total"], completed=snap["done"], info=info)
        busy = {a["slot"]: a for a in snap.get("actors", [])}
        for slot, a in busy.items():
            desc = f"actor {slot}: {a['case']} {a['variant']} s{a['seed']}"
            total = a.get("total") or None
            if slot not in self.slots:
                self.slots[slot] = self.progress.add_task(desc, total=total, info="")
            self.progress.update(self.slots[slot], description=desc[:34], total=total,
                                 completed=a.get("step") or 0, info=a.get("stage") or "", visible=True)
        for slot, task in self.slots.items():
            if slot not in busy:
                self.progress.update(task, visible=False)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()


def evaluate_main(argv: list[str] | None = None) -> int:
    """Run the benchmark flow; 0 when every case finished (and nothing regressed), 1 otherwise."""
    args = parser().parse_args(argv)
    _prepare_env(args.verbose)
    from flows.benchmark import benchmark, default_run_dir, resolve_inputs
    from tasks.actors import add_progress_listener, remove_progress_listener

    cases = [c for item in args.cases or [] for c in item.split(",") if c.strip()] or None
    resolve_inputs(args.dataset, args.preset, args.variants, cases, args.seeds, args.overrides, args.data_root)
    out = Path(args.out) if args.out else default_run_dir(args.dataset, args.preset)
    print(f"run folder: {out} (rerun with --out {out} to resume)", file=sys.stderr)
    display = _Display()
    add_progress_listener(display)
    try:
        with display:
            summary = benchmark(dataset=args.dataset, preset=args.preset, variants=args.variants, cases=cases,
                                seeds=args.seeds, out=str(out), overrides=args.overrides, num_actors=args.actors,
                                baseline=args.baseline, data_root=args.data_root, max_retries=args.retries,
                                clip_model=args.clip_model)
    finally:
        remove_progress_listener(display)
    print(f"{summary['ok']} ok, {summary['failed']} failed ({summary['cached']} reused, {summary['computed']} "
          f"computed) in {summary['wall_seconds']:.0f} s")
    for name, error in summary["errors"].items():
        print(f"failed: {name}: {error}")
    print(f"per_case: {summary['per_case']}")
    print(f"per_view: {summary['per_view']}")
    print(f"report:   {summary['report']}")
    if summary.get("verdict_markdown"):
        print(summary["verdict_markdown"])
    return 0 if summary["failed"] == 0 and not summary.get("regressed") else 1


if __name__ == "__main__":
    from c123.errors import C123Error

    try:
        sys.exit(evaluate_main())
    except C123Error as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
