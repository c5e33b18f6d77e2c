"""`vlmnas search ray.address=...` on a real Ray cluster: a head node started with
`ray start --head` on 127.0.0.1 and a second worker node process, one CPU each."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import REPO, TINY
from tests.integration._net import free_port

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _ray(*args: str, env: dict[str, str]) -> None:
    run = subprocess.run([RAY, *args], capture_output=True, text=True, timeout=180, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]


def _stop_cluster(temp: Path, address: str) -> None:
    """Kill this test's two nodes only: `ray stop` would also kill every other Ray
    instance on the host (another test's, in a parallel run). Their processes name the
    head's temp dir or the cluster's address on their command lines."""
    import psutil

    marks = (str(temp), address, f"--gcs_server_port={address.rsplit(':', 1)[1]}")
    for _ in range(10):
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.pid != os.getpid() and any(m in cmdline for m in marks):
                mine.append(proc)
        if not mine:
            return
        for proc in mine:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(mine, timeout=10)


def test_search_runs_on_a_two_node_local_cluster(tmp_path: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Token authentication, as Ray >= 2.59 expects: one shared secret for the head, the
    # worker node and the driver.
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    # Ray's socket paths must stay under 108 bytes: a short temp dir of our own.
    temp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    try:
        _ray(
            "start",
            "--head",
            f"--port={port}",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            *common,
            env=env,
        )
        _ray("start", f"--address={address}", *common, env=env)
        workdir = tmp_path / "runs"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "studies.cli",
                "search",
                f"ray.address={address}",
                f"study.workdir={workdir}",
                "study.name=cluster",
                "study.n_trials=3",
                "study.max_concurrent=2",
                "study.cpus_per_trial=1",
                *TINY,
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=REPO,
            env=env,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    finally:
        _stop_cluster(temp, address)
        shutil.rmtree(temp, ignore_errors=True)
    study = optuna.load_study(study_name="cluster", storage=f"sqlite:///{workdir / 'optuna.db'}")
    assert [t.state for t in study.get_trials()] == [optuna.trial.TrialState.COMPLETE] * 3
    client = MlflowClient(tracking_uri_for(workdir))
    experiment = client.get_experiment_by_name("cluster")
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'trial'"
    )
    nodes = {c.data.tags["ray_node"] for c in children}
    assert len(children) == 3 and len(nodes) == 2, nodes  # both nodes ran trials
