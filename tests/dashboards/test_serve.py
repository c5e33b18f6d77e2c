"""`vlmnas dashboard`'s servers: the optuna-dashboard command for each kind of Optuna
storage (and that it serves the study from it), and the supervisor that runs both
servers: one signal or one server's death stops every process of both, none is left
holding a port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from dashboards import optuna_dashboard_command, serve, supervise
from tests.integration._net import free_port, wait_for_port

# A server stand-in: starts a grandchild (as `mlflow server` starts uvicorn), writes
# "<own pid> <grandchild pid>" to argv[1], then waits.
SPAWNER = (
    "import os, subprocess, sys, time\n"
    "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "tmp = sys.argv[1] + '.tmp'\n"
    "open(tmp, 'w').write(f'{os.getpid()} {g.pid}')\n"
    "os.replace(tmp, sys.argv[1])\n"
    "time.sleep(120)\n"
)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaped yet does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pids(path: Path, timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.1)
    return [int(p) for p in path.read_text().split()]


def _gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to see which processes remain"
)


def test_optuna_dashboard_command_per_storage_kind(tmp_path: Path) -> None:
    sqlite = optuna_dashboard_command(f"sqlite:///{tmp_path}/optuna.db", port=6001)
    assert sqlite[1] == f"sqlite:///{tmp_path}/optuna.db"
    assert sqlite[sqlite.index("--host") + 1] == "127.0.0.1"  # loopback unless told
    assert sqlite[sqlite.index("--port") + 1] == "6001"
    assert sqlite[sqlite.index("--server") + 1] == "wsgiref"  # one process to stop
    assert optuna_dashboard_command("postgresql://u@db/optuna")[1] == "postgresql://u@db/optuna"
    journal = optuna_dashboard_command(f"journal:{tmp_path}/j/../study.log")
    assert journal[1:4] == ["--storage-class", "JournalFileStorage", f"{tmp_path}/study.log"]
    with pytest.raises(ValueError, match="'optuna.db'.*journal:"):
        optuna_dashboard_command("optuna.db")


def test_serve_refuses_one_port_for_both(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--optuna-port=5000 equals --port"):
        serve(
            tmp_path, experiment_id="1", optuna_storage="sqlite:///x", port=5000, optuna_port=5000
        )


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_optuna_dashboard_serves_the_study_from_its_storage(tmp_path: Path, kind: str) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'optuna.db'}"
        storage: str | optuna.storages.BaseStorage = url
    else:
        from optuna.storages.journal import JournalFileBackend

        url = f"journal:{tmp_path / 'study.log'}"
        storage = optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "study.log")))
    study = optuna.create_study(
        study_name="demo", storage=storage, directions=["maximize", "minimize"]
    )
    for acc, lat in ((0.5, 2.0), (0.4, 1.0), (0.3, 3.0)):  # the third is dominated
        study.add_trial(optuna.trial.create_trial(values=[acc, lat]))
    port = free_port()
    server = subprocess.Popen(
        optuna_dashboard_command(url, port=port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=60)
        api = f"http://127.0.0.1:{port}/api/studies/{study._study_id}?after=0"
        with urllib.request.urlopen(api, timeout=30) as response:
            body = json.loads(response.read())
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [t["number"] for t in body["trials"]] == [0, 1, 2]
    assert sorted(t["number"] for t in body["best_trials"]) == [0, 1]


def test_one_server_dying_stops_the_other_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "spawner.pids"
    dies = (
        "import os, sys, time\n"
        "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\n"
        "sys.exit(3)\n"
    )
    status = supervise(
        {
            "spawner": [sys.executable, "-c", SPAWNER, str(pidfile)],
            "dies": [sys.executable, "-c", dies, str(pidfile)],
        },
        grace_s=5,
    )
    assert status == 1  # a server that ends on its own is an error
    pids = _pids(pidfile)
    assert len(pids) == 2
    assert _gone(pids), "the surviving server or its child was left running"


def test_a_server_that_cannot_start_stops_the_one_started(tmp_path: Path) -> None:
    pidfile = tmp_path / "spawner.pids"
    with pytest.raises(FileNotFoundError):
        supervise(
            {
                "spawner": [sys.executable, "-c", SPAWNER, str(pidfile)],
                "missing": [str(tmp_path / "no-such-server")],
            }
        )
    if pidfile.exists():
        assert _gone(_pids(pidfile))
    # The spawner may have been stopped before it wrote its pids; either way none runs.


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_both_servers_and_their_children(tmp_path: Path, signum: int) -> None:
    files = [tmp_path / "a.pids", tmp_path / "b.pids"]
    driver = (
        "import sys\n"
        "from dashboards import supervise\n"
        f"spawner = {SPAWNER!r}\n"
        "sys.exit(supervise({n: [sys.executable, '-c', spawner, n] for n in sys.argv[1:]}))\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", driver, *map(str, files)], cwd=root)
    try:
        pids = [p for f in files for p in _pids(f)]
        assert len(pids) == 4 and all(_alive(p) for p in pids)
        parent.send_signal(signum)
        assert parent.wait(timeout=30) == 0  # a requested stop is a clean exit
        assert _gone(pids), "a server or its child outlived the supervisor"
    finally:
        if parent.poll() is None:
            parent.kill()


def test_servers_get_sigterm_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    files = [tmp_path / "a.pids", tmp_path / "b.pids"]
    waits = (
        "import os, sys, time\n"
        "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\n"
        "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\n"
        "time.sleep(120)\n"
    )
    driver = (
        "import sys\n"
        "from dashboards import supervise\n"
        f"waits = {waits!r}\n"
        "supervise({n: [sys.executable, '-c', waits, n] for n in sys.argv[1:]})\n"
    )
    root = Path(__file__).resolve().parents[2]
    parent = subprocess.Popen([sys.executable, "-c", driver, *map(str, files)], cwd=root)
    pids = [p for f in files for p in _pids(f)]
    assert len(pids) == 2 and all(_alive(p) for p in pids)
    os.kill(parent.pid, signal.SIGKILL)  # no handler runs: only PR_SET_PDEATHSIG can act
    parent.wait(timeout=10)
    assert _gone(pids), "a server outlived a SIGKILLed supervisor"
