"""Clean ends of `c123 evaluate`: killed with SIGKILL mid-run, nothing it started stays alive (the temporary
Prefect API server, the Ray cluster and its workers); SIGTERM or Ctrl-C (SIGINT) end it with one line saying how
to resume and exit status 128 + the signal; while it runs, a second run on its folder is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_support import DATA, FAST, needs_data

pytestmark = [needs_data, pytest.mark.timeout(600)]

LONG = [*FAST, "train.nerf_iters=3000"]
"""Long enough to be killed mid-case (the NeRF stage checkpoints every 4 steps)."""


def start(tmp_path: Path, out: Path) -> subprocess.Popen:
    """`c123 evaluate c10 --cases 07` in its own session, with its own Prefect home and its own Ray cluster."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("RAY_ADDRESS", None)
    args = [sys.executable, "-m", "c123_pipeline.cli", "evaluate", "c10", "--preset", "tiny", "--cases", "07",
            "--data-root", str(DATA), "--actors", "1", "--out", str(out), "--set", *LONG]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_computing(proc: subprocess.Popen, out: Path, timeout: float = 300) -> list[psutil.Process]:
    """Block until the case has written a checkpoint; then the driver's descendants (what it started)."""
    checkpoints = out / "cases" / "consistent123" / "07" / "seed0" / "checkpoints"
    deadline = time.time() + timeout
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the case never started"
        time.sleep(0.5)
    started = psutil.Process(proc.pid).children(recursive=True)
    names = " ".join(p.name() + " " + " ".join(p.cmdline()[:4]) for p in started)
    assert "uvicorn" in names and "raylet" in names, names  # the Prefect server and a Ray cluster are up
    return started


def still_alive(processes: list[psutil.Process], timeout: float) -> list[str]:
    """The processes that are still running (not gone, not zombies) after up to `timeout` seconds."""
    deadline = time.time() + timeout
    while True:
        alive = []
        for p in processes:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{p.pid} {' '.join(p.cmdline()[:3])}")
            except psutil.NoSuchProcess:
                continue
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_of_the_driver_leaves_no_process_it_started(tmp_path):
    out = tmp_path / "run"
    proc = start(tmp_path, out)
    try:
        started = wait_computing(proc, out)
        proc.send_signal(signal.SIGKILL)  # only the driver: its children are left to the lifeline
        proc.communicate(timeout=30)
        assert still_alive(started, timeout=30) == []
    finally:
        stop_group(proc)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_ends_with_the_resume_line_and_a_second_run_is_refused_meanwhile(tmp_path, capsys, signum):
    from c123_pipeline.cli import main

    out = tmp_path / "run"
    proc = start(tmp_path, out)
    try:
        started = wait_computing(proc, out)
        # a second run on the same folder while the first one computes: one line, at once
        code = main(["evaluate", "c10", "--preset", "tiny", "--cases", "07", "--data-root", str(DATA), "--out",
                     str(out), "--set", *LONG])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith(f"error: {out} is in use by another run (pid {proc.pid}, since "), err
        assert err.count("\n") == 0

        proc.send_signal(signum)
        _stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 128 + signum, stderr  # 143 for SIGTERM, 130 for Ctrl-C
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert lines[-1] == (f"interrupted by {signal.Signals(signum).name}: finished cases are kept; resume with: "
                             "c123 evaluate c10 "
                             f"--preset tiny --cases 07 --data-root {DATA} --actors 1 --out {out} --set "
                             + " ".join(LONG)), stderr
        assert "Traceback" not in stderr and sum("interrupted" in line for line in lines) == 1, stderr
        assert still_alive(started, timeout=30) == []
    finally:
        stop_group(proc)
