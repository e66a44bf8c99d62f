"""A local Prefect server on 127.0.0.1 plus the benchmark deployments, in one command.

    python -m c123_pipeline.flows.serve [--port 4200] [--home .prefect] [deployment options]   (or scripts/serve.sh)

Starts `prefect server start --host 127.0.0.1 --port PORT` with PREFECT_HOME=HOME (project-local
`.prefect/` by default) and analytics off, waits until it is healthy, points PREFECT_API_URL at it and
serves the deployments of flows/deployments.py. Ctrl-C stops both. Then, from another shell:

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    prefect deployment run benchmark/evaluate-c10 --param preset=tiny --watch
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from c123_pipeline.flows.deployments import add_arguments, serve_deployments

REPO = Path(__file__).resolve().parent.parent


def server_env(home: Path) -> dict[str, str]:
    """Environment of a loopback-only Prefect server and its clients."""
    env = dict(os.environ)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    return env


def start_server(host: str, port: int, home: Path, timeout: float = 180.0) -> subprocess.Popen:
    """`prefect server start` in a subprocess; returns once /api/health answers (or raises)."""
    home.mkdir(parents=True, exist_ok=True)
    prefect = Path(sys.executable).with_name("prefect")
    cmd = [str(prefect) if prefect.exists() else "prefect", "server", "start", "--host", host, "--port", str(port)]
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(cmd, env=server_env(home), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    wait_healthy(f"http://{host}:{port}/api", timeout, proc)
    return proc


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}: see its server.log")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (what Prefect's processes shut down cleanly on), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 15), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m c123_pipeline.flows.serve", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=4200)
    p.add_argument("--home", default=str(REPO / ".prefect"), help="PREFECT_HOME of server and runs")
    add_arguments(p)
    args = p.parse_args(argv)
    home = Path(args.home).expanduser().resolve()
    proc = start_server(args.host, args.port, home)
    api = f"http://{args.host}:{args.port}/api"
    print(f"Prefect server: {api} (UI http://{args.host}:{args.port}); PREFECT_HOME={home}", flush=True)
    os.environ.update(PREFECT_HOME=str(home), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false")
    try:
        serve_deployments(args)
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
