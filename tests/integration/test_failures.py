"""Trials that raise: recorded FAIL with their reason, never left RUNNING; a run of
failures stops the study with a clear message."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import TINY, vlmnas

pytestmark = pytest.mark.slow


def test_nan_loss_trials_fail_cleanly_and_the_limit_stops_the_study(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    run = vlmnas(
        "search",
        f"study.workdir={workdir}",
        "study.name=nan",
        "study.n_trials=5",
        "study.max_consecutive_failures=2",
        "trainer.lr=1e9",  # diverges within a few steps: a real NaN loss
        *TINY,
    )
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("vlmnas: error: stopped after 2 consecutive failed trials"), run.stderr[
        -2000:
    ]
    assert "study.max_consecutive_failures=2" in last and "training loss is" in last

    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials = study.get_trials()
    assert len(trials) == 2  # stopped at the limit, not all 5
    for t in trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert "FloatingPointError: training loss is" in t.user_attrs["fail_reason"]

    client = MlflowClient(tracking_uri_for(workdir))
    runs = client.search_runs([client.get_experiment_by_name("nan").experiment_id])
    children = [r for r in runs if r.data.tags.get("vlmnas.role") == "trial"]
    assert len(children) == 2
    for r in children:
        assert r.info.status == "FAILED" and r.data.tags["state"] == "failed"
        assert "training loss is" in r.data.tags["fail_reason"]
    assert all(r.info.status != "RUNNING" for r in runs)
