"""A watchdog that outlives its driver: when the driver process ends, however it ends (kill -9 included), the
processes it started end too (the temporary Prefect API server, the local Ray cluster and its workers).

`arm()` starts it once per process. The watchdog is a small separate process in its own session (so a
terminal's Ctrl-C does not reach it) holding the read end of a pipe whose write end only the driver holds:
end of file means the driver is gone. Meanwhile it records the driver's descendants every second
(pid + start time, so a reused pid is never hit); at the end it sends SIGTERM to those still alive, then
SIGKILL to what is left after a grace period. Processes started less than a second before the driver died
may be missed.

Run as a script (`python tasks/lifeline.py PID`): it imports nothing of the project.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

POLL_SECONDS = 1.0
GRACE_SECONDS = 3.0

_ARMED: dict[int, tuple[subprocess.Popen, int]] = {}


def arm() -> None:
    """Start this process's watchdog, unless it runs already."""
    if os.getpid() in _ARMED:
        return
    read_end, write_end = os.pipe()  # non-inheritable: children never hold the write end open
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())], stdin=read_end,
                            stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(read_end)
    _ARMED[os.getpid()] = (proc, write_end)  # the write end closes when this process ends


def watch(driver_pid: int) -> None:
    """Record the driver's descendants until stdin reaches end of file, then stop those still running."""
    import psutil

    me = os.getpid()
    seen: dict[int, float] = {}
    try:
        driver = psutil.Process(driver_pid)
    except psutil.Error:
        return
    while True:
        ready, _, _ = select.select([sys.stdin.fileno()], [], [], POLL_SECONDS)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break
        try:
            for child in driver.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child.create_time())
        except psutil.Error:
            break  # the driver is gone; the pipe says so next
    stop(seen)


def stop(processes: dict[int, float], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to each (pid, start time) still running, SIGKILL to what is left after `grace` seconds."""
    import psutil

    alive = []
    for pid, created in processes.items():
        try:
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                proc.send_signal(signal.SIGTERM)
                alive.append(proc)
        except psutil.Error:
            continue
    _, left = psutil.wait_procs(alive, timeout=grace)
    for proc in left:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=grace)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the driver's end stops the watch
    watch(int(sys.argv[1]))
