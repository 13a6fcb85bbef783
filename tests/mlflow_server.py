"""A real `mlflow server` on loopback, for the tests that track through HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    """`mlflow server` in its lean form (one worker, job execution off) on ``root/mlflow.db``,
    artifacts in ``root/artifacts``; returns once it answers /health."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / f"server-{port}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return server
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            stop_server(server)
            raise AssertionError(Path(log.name).read_text())
        time.sleep(0.5)


def stop_server(server: subprocess.Popen) -> None:
    with_group = server.poll() is None
    if with_group:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
