"""`study.tracking_uri=http://...`: trials are logged to an MLflow tracking server (as on a
cluster) instead of the workdir's SQLite store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.integration._cli import TINY, vlmnas
from tests.integration._net import free_port, wait_for_port

pytestmark = pytest.mark.slow


def test_search_logs_to_a_tracking_server(tmp_path: Path) -> None:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=120)
        url = f"http://127.0.0.1:{port}"
        workdir = tmp_path / "runs"
        run = vlmnas(
            "search",
            f"study.workdir={workdir}",
            "study.name=remote",
            "study.n_trials=2",
            f"study.tracking_uri={url}",
            *TINY,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("remote")
        children = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'trial'"
        )
        assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
        parent = client.search_runs(
            [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'study'"
        )[0]
        logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
        assert {"report.html", "pareto.csv", "plots"} <= logged
        assert not (workdir / "mlflow.db").exists()
        study = optuna.load_study(study_name="remote", storage=f"sqlite:///{workdir / 'optuna.db'}")
        assert len(study.get_trials()) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
