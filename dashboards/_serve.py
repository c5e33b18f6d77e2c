"""`vlmnas dashboard`: the MLflow UI and optuna-dashboard for one study, on 127.0.0.1.

The two servers run as children of a small supervisor (`supervise`), each in its own
process group, so that one signal reaches every process a server starts (the MLflow
server runs uvicorn as a child of its own). Ctrl-C or SIGTERM to the supervisor stops
both; when one server dies the other is stopped too; a second signal kills at once. On
Linux each child also gets SIGTERM if the supervisor itself is killed (PR_SET_PDEATHSIG),
so no server is left behind holding its port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType

from ._mlflow import tracking_uri_for

JOURNAL_PREFIX = "journal:"  # how `study.storage` names an Optuna journal file


def dashboard_command(workdir: Path, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow server` command line for the study store in `workdir` (one worker:
    the store is SQLite and the reviewers are few)."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracking_uri_for(workdir),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


def optuna_dashboard_command(
    storage: str, *, host: str = "127.0.0.1", port: int = 5001
) -> list[str]:
    """The `optuna-dashboard` command line for an Optuna storage: an RDB URL
    (`sqlite:///...`, `postgresql://...`) or `journal:/path/to/file`.

    A journal is named by its class: optuna-dashboard would otherwise guess it from the
    file's first bytes. The server is wsgiref (threaded, one process), never gunicorn
    even where it is installed: one process is what the supervisor can stop."""
    if storage.startswith(JOURNAL_PREFIX):
        path = Path(storage.removeprefix(JOURNAL_PREFIX)).expanduser().resolve()
        target = ["--storage-class", "JournalFileStorage", str(path)]
    elif "://" in storage:
        target = [storage]
    else:
        raise ValueError(
            f"optuna storage {storage!r}; allowed: an RDB URL such as sqlite:///path/optuna.db"
            f" or postgresql://host/db, or {JOURNAL_PREFIX}/path/to/file"
        )
    return [
        _optuna_dashboard_script(),
        *target,
        "--host",
        host,
        "--port",
        str(port),
        "--server",
        "wsgiref",
    ]


def _optuna_dashboard_script() -> str:
    # The console script of the same environment first: a different one on PATH may
    # belong to another Optuna whose storage schema differs.
    beside = Path(sys.executable).with_name("optuna-dashboard")
    found = str(beside) if beside.is_file() else shutil.which("optuna-dashboard")
    if not found:
        raise FileNotFoundError(
            f"optuna-dashboard is not installed beside {sys.executable} nor on PATH;"
            " it is a vlmnas dependency: pip install -e ."
        )
    return found


def serve(
    workdir: Path,
    *,
    experiment_id: str | None,
    optuna_storage: str,
    optuna_study_id: int | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    optuna_port: int | None = None,
) -> int:
    """Serve the MLflow UI on `port` and optuna-dashboard on `optuna_port` (default
    `port + 1`) until Ctrl-C, SIGTERM or either server exits; returns the exit status."""
    optuna_port = port + 1 if optuna_port is None else optuna_port
    if optuna_port == port:
        raise ValueError(
            f"--optuna-port={optuna_port} equals --port; the two servers need two ports"
        )
    mlflow_url = f"http://{host}:{port}/" + (
        f"#/experiments/{experiment_id}/runs" if experiment_id else ""
    )
    optuna_url = f"http://{host}:{optuna_port}/dashboard/" + (
        f"studies/{optuna_study_id}" if optuna_study_id is not None else ""
    )
    commands = {
        "MLflow UI": dashboard_command(workdir, host=host, port=port),
        "optuna-dashboard": optuna_dashboard_command(optuna_storage, host=host, port=optuna_port),
    }
    print(f"vlmnas: MLflow UI at {mlflow_url}", flush=True)
    print(
        f"vlmnas: Optuna dashboard at {optuna_url} (optuna-dashboard {optuna_storage})",
        flush=True,
    )
    print("vlmnas: Ctrl-C stops both", flush=True)
    return supervise(commands)


def supervise(commands: Mapping[str, Sequence[str]], *, grace_s: float = 10.0) -> int:
    """Run every command as a child in its own process group until SIGINT/SIGTERM/SIGHUP
    arrives or one child exits; then SIGTERM every group, and SIGKILL what is left after
    `grace_s` (or at once on a second signal). Returns 0 when stopped by a signal, else
    1 (a server ended on its own, which a reviewer did not ask for)."""
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, on_signal) for s in watched}
    children: dict[str, subprocess.Popen[bytes]] = {}
    preexec = _die_with_parent()
    try:
        for name, command in commands.items():
            if received:
                break
            children[name] = subprocess.Popen(
                list(command), start_new_session=True, preexec_fn=preexec
            )
        ended: tuple[str, int] | None = None
        while not received and ended is None:
            ended = next(
                ((n, c.returncode) for n, c in children.items() if c.poll() is not None), None
            )
            time.sleep(0.2)
        if ended is not None and not received:
            others = [n for n in children if n != ended[0]]
            print(
                f"vlmnas: error: {ended[0]} exited with status {ended[1]};"
                f" stopping {', '.join(others) or 'nothing else'}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        # Also on an error (a command that cannot start): the ones started must stop.
        _stop(children, grace_s=grace_s, hurry=lambda: len(received) > 1)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if received else 1


def _stop(
    children: Mapping[str, subprocess.Popen[bytes]], *, grace_s: float, hurry: Callable[[], bool]
) -> None:
    """SIGTERM each child's process group, wait until every group is empty, SIGKILL the
    groups still there after `grace_s` or as soon as `hurry()` says so."""
    groups = [c.pid for c in children.values()]  # each child leads its own group
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        for child in children.values():
            child.poll()  # reap, so an exited leader does not count as a member
        alive = [g for g in groups if _signal_group(g, 0)]
        if not alive:
            return
        if time.monotonic() >= deadline or hurry():
            for group in alive:
                _signal_group(group, signal.SIGKILL)
            for child in children.values():
                try:
                    child.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            return
        time.sleep(0.1)


def _signal_group(group: int, signum: int) -> bool:
    """Send `signum` to process group `group`; False when the group has no member left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    except PermissionError:
        # macOS refuses a group whose members are all zombies: nothing left to stop.
        return False
    return True


def _die_with_parent() -> Callable[[], None] | None:
    """What a child runs between fork and exec so that Linux SIGTERMs it when the
    supervisor dies, even by SIGKILL (PR_SET_PDEATHSIG); None elsewhere, where the
    process-group stop has to do. libc is loaded here, before the fork: a child of a
    threaded parent must not take the loader's locks."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig = 1

    def set_pdeathsig() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM)

    return set_pdeathsig
