"""An S3 server on 127.0.0.1 for the object-storage tests: moto's standalone server in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

S3_ENV = {"AWS_ACCESS_KEY_ID": "c123-test", "AWS_SECRET_ACCESS_KEY": "c123-test-secret",
          "AWS_DEFAULT_REGION": "us-east-1"}
"""Credentials and region the test clients use (moto accepts any)."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def s3_server(log_dir: Path, bucket: str = "c123-runs") -> Iterator[dict[str, str]]:
    """moto_server on a free loopback port with `bucket` created; yields the environment (endpoint and
    credentials) a client needs. Stopped afterwards."""
    port = _free_port()
    log = open(log_dir / "moto.log", "wb")
    # moto.server run as a module: found wherever the package is (a venv that reuses another's packages has
    # no moto_server script of its own)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    env = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, (log_dir / "moto.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline, "moto_server did not start"
                time.sleep(0.2)
        fs = s3(env)
        fs.mkdir(bucket)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def s3(env: dict[str, str]):
    """An s3fs filesystem talking to the test server (its own instance, not fsspec's cached one)."""
    import s3fs

    return s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                             endpoint_url=env["AWS_ENDPOINT_URL"], skip_instance_cache=True)


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """os.environ with `values` set (a value None removes the key), restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
