"""Constraints: a candidate that breaks a cheap constraint is recorded infeasible with its
measured values and never trained; one that breaks a constraint on accuracy is trained,
then recorded infeasible. Neither is ever on the front."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import TINY, vlmnas

pytestmark = pytest.mark.slow


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{workdir / 'optuna.db'}")


def test_cheap_constraint_rejects_before_training(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    run = vlmnas(
        "search",
        f"study.workdir={workdir}",
        "study.name=tight",
        "study.n_trials=2",
        # a trial-level rejection: `auto` would measure such candidates without making
        # them trials at all (tests/integration/test_auto_search.py)
        "study.sampler=nsga2",
        'study.constraints=["cpu/size_mb <= 0.001"]',
        *TINY,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "infeasible (cpu/size_mb <= 0.001 (measured" in run.stdout
    assert "not trained" in run.stdout
    assert "Pareto front of 0" in run.stdout
    assert _study(workdir, "tight").best_trials == []
    trials = _study(workdir, "tight").get_trials()
    assert len(trials) == 2
    for t in trials:
        assert t.state == optuna.trial.TrialState.COMPLETE  # told, so samplers learn from it
        assert t.user_attrs["infeasible"].startswith("cpu/size_mb <= 0.001")
        # feasibility lives in Optuna's constraint values, where samplers and
        # study.best_trials read it
        assert t.constraints["cpu/size_mb <= 0.001"] > 0
        metrics = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert metrics["metrics"]["cpu/size_mb"] > 0.001  # measured values are kept
        assert "val_accuracy" not in metrics["metrics"]  # ...and nothing was trained
        assert metrics["val_accuracy_history"] == []
    assert not (workdir / "cache" / "weights").exists() or not any(
        (workdir / "cache" / "weights").iterdir()
    )
    client = MlflowClient(tracking_uri_for(workdir))
    experiment = client.get_experiment_by_name("tight")
    children = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`vlmnas.role` = 'trial'"
    )
    assert {c.data.tags["state"] for c in children} == {"infeasible"}
    assert all("infeasible_reason" in c.data.tags for c in children)
    assert all(c.info.status == "FINISHED" for c in children)
    assert json.loads((workdir / "tight" / "pareto.json").read_text()) == []


def test_accuracy_constraint_is_checked_after_training(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    run = vlmnas(
        "search",
        f"study.workdir={workdir}",
        "study.name=picky",
        "study.n_trials=1",
        'study.constraints=["cpu/accuracy >= 1.5", "cpu/size_mb <= 1000"]',
        *TINY,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (trial,) = _study(workdir, "picky").get_trials()
    assert trial.user_attrs["infeasible"].startswith("cpu/accuracy >= 1.5")
    violations = trial.constraints
    assert violations["cpu/accuracy >= 1.5"] > 0 and violations["cpu/size_mb <= 1000"] <= 0
    metrics = json.loads((Path(trial.user_attrs["trial_dir"]) / "metrics.json").read_text())
    assert "cpu/accuracy" in metrics["metrics"] and metrics["val_accuracy_history"]
    assert "Pareto front of 0" in run.stdout
