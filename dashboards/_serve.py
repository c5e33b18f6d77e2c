"""`vlmnas dashboard`: the MLflow UI for a study's tracking store, on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

from ._mlflow import tracking_uri_for


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


def optuna_dashboard_hint(workdir: Path) -> str:
    db = Path(workdir).resolve() / "optuna.db"
    return f"pip install optuna-dashboard && optuna-dashboard sqlite:///{db}"


def serve(
    workdir: Path, *, experiment_id: str | None, host: str = "127.0.0.1", port: int = 5000
) -> NoReturn:
    """Become the MLflow UI process (exec), so Ctrl-C and SIGTERM reach the server itself
    and no orphan keeps the port."""
    url = f"http://{host}:{port}/" + (
        f"#/experiments/{experiment_id}/runs" if experiment_id else ""
    )
    print(f"vlmnas: MLflow UI at {url} (Ctrl-C stops it)", flush=True)
    print(
        f"vlmnas: the same study in optuna-dashboard: {optuna_dashboard_hint(workdir)}", flush=True
    )
    command = dashboard_command(workdir, host=host, port=port)
    os.execv(command[0], command)
