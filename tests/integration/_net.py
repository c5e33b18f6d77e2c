"""Loopback helpers for tests that start servers (MLflow UI, tracking server, Ray)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.integration._cli import REPO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Return once something accepts connections on 127.0.0.1:`port`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def start_dashboard(
    workdir: Path, study: str, port: int, optuna_port: int | None = None
) -> subprocess.Popen:
    """`vlmnas dashboard` for `study` in `workdir`: the MLflow UI on 127.0.0.1:`port`,
    optuna-dashboard on `optuna_port` (default: another free port, as port + 1 may be
    taken), their output (which names both URLs) on the returned process's stdout. The
    caller terminates it."""
    if optuna_port is None:
        optuna_port = free_port()
        while optuna_port == port:
            optuna_port = free_port()
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "studies.cli",
            "dashboard",
            f"study.workdir={workdir}",
            f"study.name={study}",
            "--port",
            str(port),
            "--optuna-port",
            str(optuna_port),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
