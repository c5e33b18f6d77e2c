"""Two `vlmnas search` drivers on one journal-file study at once: together they reach
n_trials exactly, neither fails the other's live trials, each trial is logged once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from dashboards import tracking_uri_for
from tests.integration._cli import REPO, TINY

pytestmark = pytest.mark.slow

N_TRIALS = 5


def test_two_drivers_share_one_study(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    journal = tmp_path / "shared" / "study.log"
    args = [
        "search",
        f"study.workdir={workdir}",
        "study.name=two",
        f"study.n_trials={N_TRIALS}",
        f"study.storage=journal:{journal}",
        "study.cpus_per_trial=1",
        *TINY,
    ]
    # Output to files, not pipes: waiting on one driver's pipe while the other's fills
    # up blocked the other in a write (a deadlock once auto's driver logged more).
    logs = [tmp_path / f"driver{i}.log" for i in range(2)]
    drivers = [
        subprocess.Popen(
            [sys.executable, "-m", "studies.cli", *args],
            cwd=REPO,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        for log in logs
    ]
    for d in drivers:
        d.wait(timeout=900)
    outputs = [log.read_text() for log in logs]
    for d, out in zip(drivers, outputs, strict=True):
        assert d.returncode == 0, out[-3000:]

    study = optuna.load_study(
        study_name="two", storage=JournalStorage(JournalFileBackend(str(journal)))
    )
    trials = study.get_trials()
    seen = f"{[(t.number, t.state.name, t.user_attrs) for t in trials]}\n" + "\n".join(
        o[-1500:] for o in outputs
    )
    ran = [t for t in trials if "surplus" not in t.user_attrs]
    # n_trials exactly: every trial that ran finished COMPLETE, none was failed by the
    # other driver (a failed-as-dead trial would carry a rerun)
    assert [t.state for t in ran] == [TrialState.COMPLETE] * N_TRIALS, seen
    assert not [t for t in trials if "rerun_of" in t.user_attrs], seen
    assert all(t.state == TrialState.FAIL for t in trials if "surplus" in t.user_attrs), seen
    # both drivers ran trials (the test would be one driver's otherwise)
    by_driver = {t.user_attrs["driver"] for t in ran}
    assert len(by_driver) == 2, seen
    assert sum(t.user_attrs.get("baseline") is True for t in ran) == 1, seen

    client = MlflowClient(tracking_uri_for(workdir))
    runs = client.search_runs([client.get_experiment_by_name("two").experiment_id])
    children = [r for r in runs if r.data.tags.get("vlmnas.role") == "trial"]
    numbers = sorted(int(r.data.tags["trial_number"]) for r in children)
    assert numbers == sorted(t.number for t in ran), seen  # each trial once
    assert len([r for r in runs if r.data.tags.get("vlmnas.role") == "study"]) == 1
    assert all(r.info.status != "RUNNING" for r in runs)
