"""Early stopping by non-dominated rank (studies/_rungs.py), alone and through Ray."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest

from studies import load_config
from studies._rungs import ParetoRungs, front_ranks, milestones
from studies._search import early_stop, search

ACC_LAT = (["val_accuracy", "cpu/latency_p50_ms"], ["maximize", "minimize"])


def _rungs(rank_by: str = "pareto", factor: int = 2) -> ParetoRungs:
    metrics, directions = ACC_LAT if rank_by == "pareto" else (["val_accuracy"], ["maximize"])
    return ParetoRungs([1, 2], factor, list(metrics), list(directions))


def _at(epoch: int, acc: float, lat: float) -> dict[str, float]:
    return {"epoch": epoch, "val_accuracy": acc, "cpu/latency_p50_ms": lat}


def test_milestones_are_below_the_full_budget() -> None:
    assert milestones(2, 3, 6) == [2]
    assert milestones(1, 2, 8) == [1, 2, 4]
    assert milestones(1, 3, 10) == [1, 3, 9]
    assert milestones(6, 3, 6) == []  # grace period = budget: every epoch reported, none cut


def test_front_ranks() -> None:
    points = [[0.8, 5.0], [0.7, 4.0], [0.5, 6.0], [0.3, 1.0], [0.4, 7.0]]
    directions = ["maximize", "minimize"]
    # 0, 1, 3 are non-dominated; 2 is dominated by 0 and 1; 4 by 2 as well
    assert front_ranks(points, directions) == [0, 0, 1, 0, 2]
    assert front_ranks([], directions) == []


def test_fast_but_less_accurate_trial_goes_on_where_plain_asha_stops_it() -> None:
    for rank_by in ("pareto", "accuracy"):
        rungs = _rungs(rank_by)
        for trial, (acc, lat) in enumerate([(0.8, 5.0), (0.7, 4.0), (0.6, 3.0)]):
            rungs.stop(str(trial), _at(1, acc, lat))
        # the least accurate so far, but three times as fast as any: nothing dominates
        # it; by accuracy alone all three are better (3/4 > 1/2)
        fast = rungs.stop("fast", _at(1, 0.3, 1.0))
        assert fast is (rank_by == "accuracy")
    # dominated by all four: 4 of 5 on a better front > 1/2 -> stops either way
    rungs = _rungs("pareto")
    for trial, values in enumerate([(0.8, 5.0), (0.7, 4.0), (0.6, 3.0), (0.3, 1.0)]):
        rungs.stop(str(trial), _at(1, *values))
    assert rungs.stop("slow", _at(1, 0.2, 6.0))


def test_reduction_factor_sets_how_many_better_ones_a_trial_may_have() -> None:
    """A trial goes on while the share of trials at its rung on a strictly better front
    (itself counted) is at most 1/factor."""
    for factor, previous, expected in [
        (2, [(0.8, 1.0), (0.7, 0.9)], True),  # both dominate it: 2/3 > 1/2
        (2, [(0.8, 1.0), (0.1, 9.0)], False),  # one dominates it: 1/3 <= 1/2
        (3, [(0.8, 1.0), (0.1, 9.0)], False),  # 1/3 <= 1/3
    ]:
        rungs = _rungs("pareto", factor)
        for trial, values in enumerate(previous):
            rungs.stop(str(trial), _at(1, *values))
        assert rungs.stop("new", _at(1, 0.5, 2.0)) is expected, (factor, previous)


def test_only_rung_epochs_count_and_each_trial_is_recorded_once() -> None:
    rungs = _rungs("pareto")
    rungs.stop("a", _at(1, 0.9, 1.0))
    assert not rungs.stop("b", _at(3, 0.0, 9.0))  # epoch 3 is no rung (rungs 1 and 2)
    assert not rungs.stop("b", {"val_accuracy": 0.0})  # no epoch: not a per-epoch report
    assert not rungs.stop("first", _at(2, 0.0, 9.0))  # the first at a rung always goes on
    assert not rungs.stop("b", _at(1, 0.1, 2.0))  # "a" dominates it: 1 of 2, not > 1/2
    assert rungs.stop("c", _at(1, 0.1, 3.0))  # "a" and "b" dominate it: 2 of 3
    # recorded once: the same epoch reported again (a cached training) is not re-judged
    assert not rungs.stop("c", _at(1, 0.1, 3.0))
    assert set(rungs.recorded[1]) == {"a", "b", "c"} and set(rungs.recorded[2]) == {"first"}


def test_nan_accuracy_is_the_worst_and_a_missing_metric_is_named() -> None:
    rungs = _rungs("pareto")
    rungs.stop("a", _at(1, 0.5, 2.0))
    rungs.stop("b", _at(1, 0.4, 2.0))
    assert rungs.stop("nan", _at(1, math.nan, 2.0))  # below both at the same latency
    assert rungs.recorded[1]["nan"][0] == -math.inf
    with pytest.raises(KeyError, match="lacks \\['cpu/latency_p50_ms'\\]"):
        rungs.stop("c", {"epoch": 1, "val_accuracy": 0.5})


def test_study_config_builds_rungs_on_the_objectives_known_before_training() -> None:
    assert early_stop(load_config([])) is None  # the quick preset leaves it off
    on = ["study.asha.enabled=true", "study.asha.grace_period=1", "trainer.max_epochs=4"]
    pareto = early_stop(load_config(on))
    assert pareto is not None
    rungs = pareto.__self__  # type: ignore[attr-defined]
    assert rungs.metrics == ["val_accuracy", "cpu/latency_p50_ms"] and rungs.rungs == [1, 3]
    plain = early_stop(load_config([*on, "study.asha.rank_by=accuracy"]))
    assert plain is not None and plain.__self__.metrics == ["val_accuracy"]  # type: ignore[attr-defined]


# Per trial number: (val_accuracy at every epoch, latency known before training).
_CURVES = {0: (0.5, 2.0), 1: (0.6, 3.0), 2: (0.3, 1.0), 3: (0.2, 4.0), 4: (0.55, 2.5)}


def curve_trial(config: Mapping[str, Any], report: Callable[[dict[str, float]], None]) -> dict:
    """A trial that trains 3 epochs at a fixed accuracy (its `_CURVES` entry)."""
    acc, lat = _CURVES[int(config["trial_number"])]
    for epoch in (1, 2, 3):
        report({"epoch": epoch, "val_accuracy": acc, "cpu/latency_p50_ms": lat})
    return {
        "cpu/accuracy": acc,
        "cpu/latency_p50_ms": lat,
        "val_accuracy": acc,
        "cpu/latency_source": "measured",
        "val_accuracy_history": [acc] * 3,
    }


def test_search_prunes_by_rank_through_ray(tmp_path: Path) -> None:
    """Through Ray's scheduler interface, trials in order 0..4 (one at a time): trial 2,
    the least accurate of the first three but the fastest, goes on (plain ASHA would stop
    it: 2 of 3 are more accurate, as the unit tests above show for `rank_by=accuracy`);
    trial 3, slower and less accurate than all, is pruned. Pruned trials are PRUNED in
    Optuna and off the front. (One study only: each costs ~25 s of Ray start-up.)"""
    pruned = {3}
    import ray.cloudpickle

    # Ray's workers cannot import a test module by name: send `curve_trial` by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    cfg = load_config(
        [
            f"study.workdir={tmp_path}",
            "study.name=rungs",
            "study.n_trials=5",
            "study.sampler=random",
            "study.asha.enabled=true",
            "study.asha.grace_period=1",
            "study.asha.reduction_factor=2",
            "study.asha.rank_by=pareto",
            "trainer.max_epochs=3",
            "data.train_images=40",
            "data.val_images=10",
        ]
    )
    summary = search(cfg, trial_fn=curve_trial)
    study = optuna.load_study(study_name="rungs", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    states = {t.number: t.state for t in study.get_trials()}
    assert {n for n, s in states.items() if s == optuna.trial.TrialState.PRUNED} == pruned
    assert {n for n, s in states.items() if s == optuna.trial.TrialState.COMPLETE} == (
        set(_CURVES) - pruned
    )
    assert {m.number for m in summary.front} <= set(_CURVES) - pruned
