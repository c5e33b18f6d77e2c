"""The study store with several drivers (`studies._storage`): which RUNNING trials are
dead, what counts towards n_trials, and surplus trials when two drivers ask at once."""

from __future__ import annotations

import datetime
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from studies import load_config
from studies._outcome import Outcome
from studies._storage import (
    HEARTBEAT_ATTR,
    StudyStore,
    counted,
    dead_reason,
    driver_alive,
    driver_id,
    finished_count,
    open_storage,
)
from studies._timing import Timing


def _running(user_attrs: dict[str, object], started: float, system_attrs: dict | None = None):
    return optuna.trial.FrozenTrial(
        number=0,
        state=TrialState.RUNNING,
        value=None,
        datetime_start=datetime.datetime.fromtimestamp(started),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=user_attrs,
        system_attrs=system_attrs or {},
        intermediate_values={},
        trial_id=0,
    )


def _dead_pid_driver() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    host, _, _ = driver_id().rsplit(":", 2)
    return f"{host}:{child.pid}:1"


def test_dead_reason_tells_live_from_dead_drivers() -> None:
    now = time.time()
    me = driver_id()
    assert driver_alive(me) is True
    assert dead_reason(_running({"driver": me}, now - 1000), now=now, stale_after=60) is None
    gone = _dead_pid_driver()
    assert driver_alive(gone) is False
    assert "is gone" in str(dead_reason(_running({"driver": gone}, now), now=now, stale_after=60))
    # another host's driver: only its heartbeat can tell
    other = "elsewhere:1:1"
    assert driver_alive(other) is None
    assert dead_reason(_running({"driver": other}, now - 1000), now=now, stale_after=60) is None
    stale = _running({"driver": other}, now - 1000, {HEARTBEAT_ATTR: now - 61})
    assert "no heartbeat for 61 s" in str(dead_reason(stale, now=now, stale_after=60))
    fresh = _running({"driver": other}, now - 1000, {HEARTBEAT_ATTR: now - 5})
    assert dead_reason(fresh, now=now, stale_after=60) is None
    # a trial from before driver ids: dead once older than stale_after
    assert dead_reason(_running({}, now - 5), now=now, stale_after=60) is None
    assert "no driver id" in str(dead_reason(_running({}, now - 61), now=now, stale_after=60))


def _cfg(tmp_path: Path, n_trials: int = 3, storage: str = "journal"):
    overrides = [f"study.workdir={tmp_path / 'runs'}", "study.name=s", f"study.n_trials={n_trials}"]
    if storage == "journal":
        overrides.append(f"study.storage=journal:{tmp_path / 'study.log'}")
    return load_config(overrides)


def _open_at(tmp_path: Path, start: float) -> str:
    cfg = _cfg(tmp_path, storage="sqlite")
    while time.time() < start:  # every process opens the new database at the same moment
        pass
    try:
        open_storage(cfg)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok"


def test_processes_opening_a_new_sqlite_store_at_once_all_get_it(tmp_path: Path) -> None:
    # Optuna creates a new database's schema without a lock: without the retry in
    # open_storage, 4 processes racing here failed 27 times in 15 rounds ("table studies
    # already exists", a UNIQUE constraint on alembic_version)
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        workdir = tmp_path / str(round_)
        (workdir / "runs").mkdir(parents=True)
        start = time.time() + 1.0
        with ctx.Pool(4) as pool:
            opened = pool.starmap(_open_at, [(workdir, start)] * 4)
        assert opened == ["ok"] * 4, opened


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_a_dead_drivers_trial_is_rerun_and_a_live_ones_is_not(tmp_path: Path, storage: str) -> None:
    cfg = _cfg(tmp_path, storage=storage)
    (tmp_path / "runs").mkdir()
    with StudyStore(cfg, Timing()) as first:
        live = first.ask()
        assert live is not None and live.user_attrs["driver"] == driver_id()
        # a trial some crashed driver on this host left RUNNING
        dead = first.study.ask()
        dead.set_user_attr("driver", _dead_pid_driver())
        with StudyStore(cfg, Timing()) as second:  # a second driver starts
            assert second.rerun == 1
            trials = second.trials()
            assert trials[live.number].state == TrialState.RUNNING  # untouched
            assert trials[dead.number].state == TrialState.FAIL
            rerun = [t for t in trials if t.user_attrs.get("rerun_of") == dead.number]
            assert len(rerun) == 1 and rerun[0].state == TrialState.WAITING
            assert rerun[0].params == trials[dead.number].params
            # counted: the live one; the dead one is replaced by its (waiting) rerun
            assert [t.number for t in counted(trials)] == [live.number]


def test_the_store_hands_out_n_trials_baseline_first(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, n_trials=2)
    (tmp_path / "runs").mkdir()
    with StudyStore(cfg, Timing()) as store:
        a, b = store.ask(), store.ask()
        assert a is not None and b is not None
        assert a.user_attrs.get("baseline") is True and "baseline" not in b.user_attrs
        assert store.ask() is None  # two running trials count
        store.tell(b.number, Outcome("failed", None, "boom"), {"trial_dir": "x"})
        assert store.ask() is None  # a failed trial counts as finished
        trials = store.trials()
        assert trials[b.number].user_attrs["fail_reason"] == "boom"
        assert finished_count(trials) == 1 and store.running == 1


def test_a_trial_asked_past_n_trials_by_a_racing_driver_is_surplus(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, n_trials=1)
    (tmp_path / "runs").mkdir()
    with StudyStore(cfg, Timing()) as store:
        real_ask = store.study.ask

        def racing_ask() -> optuna.Trial:
            other = real_ask()  # another driver asks between this one's check and ask
            other.set_user_attr("driver", "elsewhere:1:1")
            return real_ask()

        store.study.ask = racing_ask  # type: ignore[method-assign]
        assert store.ask() is None
        trials = store.trials()
        assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL]
        assert "past study.n_trials" in trials[1].user_attrs["surplus"]
        assert [t.number for t in counted(trials)] == [0]  # the surplus one never counts


def test_a_choice_queued_when_the_study_fills_up_is_closed_as_surplus(tmp_path: Path) -> None:
    """Two `auto` drivers each queue a choice; the study fills up with the first, so
    the second never runs: it is closed as surplus, not left WAITING in the store."""
    cfg = _cfg(tmp_path, n_trials=1)
    (tmp_path / "runs").mkdir()
    with StudyStore(cfg, Timing()) as store:
        baseline = store.ask()
        assert baseline is not None and baseline.user_attrs.get("baseline") is True
        store.enqueue({}, {"chosen_by": "the other driver's choice"})
        assert store.waiting()
        assert store.ask() is None
        assert not store.waiting()
        trials = store.trials()
        assert [t.state for t in trials] == [TrialState.RUNNING, TrialState.FAIL]
        assert trials[1].user_attrs["chosen_by"] == "the other driver's choice"
        assert "the study was full" in trials[1].user_attrs["surplus"]
        assert [t.number for t in counted(trials)] == [0]


@pytest.mark.parametrize(
    ("sampler", "kind"),
    [("tpe", optuna.samplers.TPESampler), ("auto", optuna.samplers.RandomSampler)],
)
def test_the_study_uses_the_configured_sampler(tmp_path: Path, sampler: str, kind: type) -> None:
    """`study.sampler` reaches Optuna (it once did not: every search ran Optuna's
    default); `auto` chooses in the driver and enqueues every value."""
    (tmp_path / "runs").mkdir()
    cfg = load_config(
        [f"study.workdir={tmp_path / 'runs'}", "study.name=s", f"study.sampler={sampler}"]
    )
    with StudyStore(cfg, Timing()) as store:
        assert isinstance(store.study.sampler, kind)
