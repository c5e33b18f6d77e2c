"""Fixtures shared by the integration modules."""

from __future__ import annotations

import fcntl
from pathlib import Path

import pytest

from tests.integration._cli import TINY, vlmnas


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The workdir of one finished `vlmnas search` (study `tiny`, 3 trials, `TINY`), read
    by the CLI, export and browser tests: about a minute of search on 2 cores, run once
    per test run. Under pytest-xdist the workers share it through a folder above their
    own, the first one to get the lock runs the search. Tests may add to the workdir (an
    export, a rerun that runs nothing) but must not change its trials."""
    shared = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        shared = shared.parent
    workdir, done = shared / "tiny-study", shared / "tiny-study.done"
    with open(shared / "tiny-study.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            run = vlmnas(
                "search", f"study.workdir={workdir}", "study.name=tiny", "study.n_trials=3", *TINY
            )
            assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
            assert "Pareto front of" in run.stdout
            done.touch()
    return workdir
