"""Resume after the search driver is SIGKILLed midway: nothing lost, nothing doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from dashboards import tracking_uri_for
from tests.integration._cli import REPO, TINY, vlmnas

pytestmark = pytest.mark.slow

N_TRIALS = 4


def _states(workdir: Path) -> list[optuna.trial.TrialState]:
    try:
        study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir / 'optuna.db'}")
    except Exception:  # the study does not exist yet
        return []
    return [t.state for t in study.get_trials()]


def test_resume_after_sigkill(tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    args = [
        "search",
        f"study.workdir={workdir}",
        "study.name=resume",
        f"study.n_trials={N_TRIALS}",
        *TINY,
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "studies.cli", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    # kill it while one trial is complete and the next one runs
    while time.monotonic() < deadline:
        states = _states(workdir)
        if (
            states.count(optuna.trial.TrialState.COMPLETE) >= 1
            and optuna.trial.TrialState.RUNNING in states
        ):
            break
        assert driver.poll() is None, "the search ended before it could be killed"
        time.sleep(0.5)
    else:
        raise AssertionError(f"no running trial to interrupt: {_states(workdir)}")
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    killed_at = _states(workdir)
    assert optuna.trial.TrialState.RUNNING in killed_at, killed_at

    run = vlmnas(*args)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "interrupted, rerun" in run.stdout

    study = optuna.load_study(study_name="resume", storage=f"sqlite:///{workdir / 'optuna.db'}")
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    interrupted = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    # (messages carry the states and the resumed run's output: this test once failed
    # without them and the failure could not be reproduced in five reruns)
    seen = f"killed at {killed_at}; now {[t.state for t in trials]}; {run.stdout[-1500:]}"
    assert len(complete) == N_TRIALS, seen  # the total reaches n_trials
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING], seen
    # each interrupted trial was rerun once with the same parameters; nothing else doubled
    reruns = {t.user_attrs["rerun_of"]: t for t in complete if "rerun_of" in t.user_attrs}
    assert sorted(reruns) == sorted(t.number for t in interrupted), seen
    for t in interrupted:
        assert reruns[t.number].params == t.params
    finished_before = [i for i, s in enumerate(killed_at) if s == optuna.trial.TrialState.COMPLETE]
    assert all(
        trials[i].state == optuna.trial.TrialState.COMPLETE for i in finished_before
    )  # kept, not rerun

    client = MlflowClient(tracking_uri_for(workdir))
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert len([r for r in runs if r.data.tags.get("vlmnas.role") == "study"]) == 1  # parent reused
    children = [r for r in runs if r.data.tags.get("vlmnas.role") == "trial"]
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(
        t.number for t in complete
    ), seen
    assert all(r.info.status != "RUNNING" for r in runs), [
        (r.info.run_name, r.info.status) for r in runs
    ]
