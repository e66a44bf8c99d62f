"""`c123 evaluate DATASET ...`: the benchmark flow in this process, with a live progress display.

Runs on Prefect's embedded defaults (a temporary local API on SQLite under $PREFECT_HOME, unless
PREFECT_API_URL names a server) and a private local Ray cluster (or the one RAY_ADDRESS names); both end
with this process, however it ends (tasks/lifeline.py). Rerunning with the same --out resumes: finished
cases are reused, interrupted ones continue. Ctrl-C and SIGTERM end the run with the line that resumes it
(exit status 130 and 143).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shlex
import sys
from pathlib import Path

from c123.cli import Interrupted, OneLineParser, count
from c123.provenance import offline_defaults
from c123_pipeline.tasks import lifeline, warm_start

# The modules that import Prefect (and Ray, pandas) are imported inside the functions: Prefect reads its
# settings from the environment as it is imported, and `_prepare_env` sets them first.


def cases_per_gpu_arg(text: str) -> int | str:
    """--cases-per-gpu: an integer >= 1 or 'auto'."""
    from c123.cli import count

    return "auto" if text == "auto" else count(1)(text)


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="c123 evaluate", description="Benchmark a dataset: reconstructions on Ray actors, metrics, "
        "Parquet tables and a report, as a Prefect flow. Rerun with the same --out to resume.")
    p.add_argument("dataset", help="realfusion15 | c10 | realfusion15-original | synthetic | synthetic-elevated | "
                   "a dataset folder")
    p.add_argument("--preset", default="paper", help="paper | fast | tiny | verify (default paper; verify: the "
                   "synthetic dataset with the oracle prior, numbers with a right answer)")
    p.add_argument("--variant", dest="variants", action="extend", nargs="+", metavar="V",
                   help="consistent123 (default; verify: 3d-only), 3d-only, dynamic-only, fixed-switch, "
                        "3d-then-2d; a weight shape as consistent123:linear")
    p.add_argument("--cases", action="extend", nargs="+", metavar="CASE",
                   help="only these case ids (comma-separated or several; shell wildcards)")
    p.add_argument("--seed", dest="seeds", action="extend", nargs="+", type=int, metavar="N", help="seeds (default 0)")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/<dataset>-<preset>-<time>); "
                   "an existing one resumes")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.nerf_iters=100")
    p.add_argument("--elevation", metavar="DEG",
                   help="elevation of every case's input view in degrees, strictly between -90 and 90, overriding "
                        "the dataset table's (default: each case's table value, else 0); synthetic cases keep their "
                        "true elevation for the oracle")
    p.add_argument("--actors", dest="num_actors", type=count(1), metavar="N",
                   help="number of Ray actors (default: one per GPU, else per CPU)")
    p.add_argument("--cases-per-gpu", metavar="N|auto", type=cases_per_gpu_arg,
                   help="cases sharing each GPU (Ray fractional GPUs; default 1); auto: as many as the measured "
                        "memory budget of a case fits in a GPU's free memory; a number that cannot fit is refused")
    p.add_argument("--baseline", metavar="RUN_DIR", help="judge this run against a finished run of the same "
                   "dataset ('latest': the newest earlier run of the same dataset and preset beside --out)")
    p.add_argument("--drift-window", type=count(1), metavar="N", help="also judge this run against the median "
                   "of the last N good earlier runs of the dataset and preset beside it (a slow decline)")
    p.add_argument("--golden", metavar="RUN_ID", help="judge drift against this pinned earlier run beside it instead")
    p.add_argument("--threshold", dest="thresholds", action="extend", nargs="+", metavar="METRIC=VALUE",
                   help="allowed worsening against --baseline, e.g. psnr=0.5 lpips=0.01")
    p.add_argument("--data-root", metavar="DIR", help="folder holding the named datasets (default $C123_DATA)")
    p.add_argument("--protocol", default="c123", help="metric protocol: c123 (default), magic123 (CLIP "
                   "ViT-bigG-14 over 100 views, 224 px, PSNR at 800 px) or syncdreamer (GSO: Chamfer, volume IoU, "
                   "PSNR/SSIM/LPIPS-VGG over 16 views at the input's elevation; synthetic and gso datasets)")
    p.add_argument("--clip-model", metavar="ID", help="CLIP of the CLIP-similarity metric (default: the protocol's, "
                   "else the preset's)")
    p.add_argument("--retries", dest="max_retries", type=count(0), default=2,
                   help="retries of a case whose actor died (default 2)")
    p.add_argument("--share-idle-threads", action="store_true",
                   help="CPU only: cases still computing take over idle actors' threads once no case waits (a faster "
                        "tail; their last digits then depend on timing, so identical runs may differ)")
    p.add_argument("--allow-failures", type=count(0), default=0, metavar="N",
                   help="failed cases that still count as success (default 0)")
    p.add_argument("--verbose", "-v", action="store_true", help="show Prefect's and the actors' logs")
    return p


def _prepare_env(verbose: bool) -> None:
    """Embedded defaults, set before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    offline_defaults()
    if not verbose:  # the display and the summary lines say what happened; errors end in one line
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
        os.environ.setdefault("C123_RAY_LOG_TO_DRIVER", "0")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' weight-loading bars


def spec_from(opts: argparse.Namespace):
    """The flow's parameters from the command line (names shared with BenchmarkSpec)."""
    from c123_pipeline.flows.spec import ELEVATION_TRUE, BenchmarkSpec

    from c123.config import elevation_value

    given = vars(opts)
    thresholds = given.pop("thresholds")
    if str(given.get("elevation")).strip().lower() != ELEVATION_TRUE:  # 'true': each case's truth (flows.spec)
        given["elevation"] = elevation_value(given.get("elevation"), "--elevation",
                                             "pass the degrees of the input views, e.g. --elevation 30, 'estimate', "
                                             "'true', or leave it out")
    spec = BenchmarkSpec(**{f.name: given[f.name] for f in dataclasses.fields(BenchmarkSpec) if f.name in given})
    if thresholds is not None:
        from c123_pipeline.reports.regression import parse_thresholds  # pandas: only when thresholds are given
        spec.thresholds = parse_thresholds(thresholds)
    return spec


def resume_command(argv: list[str], out: Path | str) -> str:
    """The command that continues this run: the same arguments, with --out when it was not given."""
    return shlex.join(["c123", "evaluate", *argv, *([] if "--out" in argv else ["--out", str(out)])])


@contextlib.contextmanager
def _signals_as_interrupts():
    """Inside a flow run Prefect turns SIGTERM into its TerminationSignal; for the command it is an interrupt
    like Ctrl-C (c123.cli prints the resume line and exits 128 + the signal)."""
    from prefect.exceptions import TerminationSignal

    try:
        yield
    except TerminationSignal as stop:
        raise Interrupted(stop.signal) from None


class _StderrLog:
    """What the checks before the flow say (Prefect's logger is not there yet)."""

    def warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    info = debug = lambda self, message: None


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


@contextlib.contextmanager
def started_ahead(spec, checked):
    """Ray and the actors started for the flow run the block starts (tasks/warm_start.py): they start while
    Prefect's API does, and the actors load the first case's priors meanwhile. The flow run stops them once its
    cases are done; leaving the block releases a start no run took and waits for the stop, so that the block can
    show the run's results first."""
    from c123_pipeline.flows.cluster import warm_config
    from c123_pipeline.flows.spec import case_config

    first = case_config(next(iter(checked.configs.values())), checked.dataset.cases[0], spec.elevation)
    warm = warm_start.WarmStart(spec.num_actors, spec.work_fn, spec.max_retries,
                                len(checked.dataset.cases) * len(checked.configs), warm_config(spec, first),
                                spec.cases_per_gpu).begin()
    try:
        yield
    finally:
        warm.release().join(timeout=30)


def run_started_ahead(spec, checked):
    """The benchmark flow run's final state, with Ray and the actors started ahead (`started_ahead`)."""
    from c123_pipeline.flows.benchmark import benchmark

    with started_ahead(spec, checked):
        return benchmark(**dataclasses.asdict(spec), return_state=True)


def evaluate_command(args: argparse.Namespace) -> int:
    """`c123 evaluate ...` (args.rest): run the benchmark flow; 0 when every case finished (or no more failed
    than --allow-failures) and nothing regressed, else 1. Interrupted (Ctrl-C, SIGTERM), the caller prints
    args.resume, the command that continues."""
    opts = parser().parse_args(args.rest)
    _prepare_env(opts.verbose)
    lifeline.arm()  # before Prefect's server or Ray start: whatever they start ends with this process
    from c123_pipeline.flows.benchmark import benchmark, summary_of
    from c123_pipeline.flows.spec import check_spec, default_run_dir
    from c123_pipeline.tasks.actors import add_progress_listener, remove_progress_listener

    spec = spec_from(opts)
    out = spec.out or default_run_dir(opts.dataset, opts.preset)  # a folder or a URL (tasks/storage.py)
    spec.out = str(out)
    args.resume = f"finished cases are kept; resume with: {resume_command(args.rest, out)}"
    checked = check_spec(spec, _StderrLog())  # every user error before Prefect and Ray start
    print(f"run folder: {out} (rerun with --out {out} to resume)", file=sys.stderr)
    display = _Display()
    add_progress_listener(display)
    try:
        with _signals_as_interrupts(), started_ahead(spec, checked):
            with display:
                state = benchmark(**dataclasses.asdict(spec), return_state=True)
            return report_summary(state, summary_of(state))  # before the wait for Ray's stop
    finally:
        remove_progress_listener(display)


def report_summary(state, summary: dict) -> int:
    """Print the finished run's summary; the exit code (0 when every case finished, or no more failed than
    allowed, and nothing regressed)."""
    print(f"{summary['ok']} ok, {summary['failed']} failed ({summary['cached']} reused, {summary['computed']} "
          f"computed) in {summary['wall_seconds']:.0f} s")
    for name, error in summary["errors"].items():
        print(f"failed: {name}: {error}")
    print(f"per_case: {summary['per_case']}")
    print(f"per_view: {summary['per_view']}")
    print(f"report:   {summary['report']}")
    if summary.get("verdict_markdown"):
        print(summary["verdict_markdown"])
    if not state.is_completed():
        print(f"flow run {state.name}: {state.message}")
    return 0 if state.is_completed() and not summary.get("regressed") else 1


if __name__ == "__main__":
    from c123_pipeline.cli import main

    sys.exit(main(["evaluate", *sys.argv[1:]]))
