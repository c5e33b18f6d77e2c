"""Early-stopped trials (studies/_rungs.py) are PRUNED in Optuna and MLflow and never on
the front or exported."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import QUICK_TIMING, vlmnas

pytestmark = pytest.mark.slow


def test_asha_pruned_trials_stay_off_the_front(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    # Enough data and width choices that trials differ after one epoch: ASHA only stops
    # a trial strictly below its rung's cutoff, so identical accuracies stop nothing.
    common = [
        f"study.workdir={workdir}",
        "study.name=asha",
        "trainer.threads=1",
        "study.population_size=2",
        # auto trains ever better candidates, and a later better trial stops nothing
        "study.sampler=nsga2",
        # widths that still differ (trials must not tie) but train in seconds
        "search_space.lm.width=[32,64]",
        "search_space.vision.width=[32]",
        *QUICK_TIMING,
    ]
    run = vlmnas(
        "search",
        *common,
        "study.n_trials=6",
        # a rung at epoch 2 (after 1 epoch every accuracy here is 0: ties stop nothing);
        # the last epoch is never a rung, so a fully trained trial is never pruned
        "trainer.max_epochs=3",
        "data.train_images=400",
        "data.val_images=80",  # finer accuracy steps: ASHA stops nothing on ties
        "study.asha.enabled=true",
        "study.asha.grace_period=2",
        "study.asha.reduction_factor=2",
        # by accuracy alone, so that a trial is sure to be stopped; the Pareto rule is
        # tested on made-up curves (tests/studies/test_rungs.py)
        "study.asha.rank_by=accuracy",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned, f"ASHA stopped no trial: {[t.state for t in trials]}"
    assert len(pruned) + len(complete) == 6
    for t in pruned:
        assert "stopped early by the scheduler" in t.user_attrs["pruned_reason"]

    front = {m["number"] for m in json.loads((workdir / "asha" / "pareto.json").read_text())}
    assert front and front <= {t.number for t in complete}
    export = vlmnas("export", *common)
    assert export.returncode == 0, export.stderr
    assert {int(p.name) for p in (workdir / "asha" / "export").iterdir()} == front

    client = MlflowClient(tracking_uri_for(workdir))
    runs = client.search_runs([client.get_experiment_by_name("asha").experiment_id])
    by_number = {
        int(r.data.tags["trial_number"]): r
        for r in runs
        if r.data.tags.get("vlmnas.role") == "trial"
    }
    for t in pruned:
        assert by_number[t.number].data.tags["state"] == "pruned"
        assert by_number[t.number].info.status == "KILLED"
