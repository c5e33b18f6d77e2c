"""The one feasible front (`studies._front`): incremental membership, hypervolume, and
agreement with a from-scratch non-dominated sort and with Optuna's `best_trials`."""

from __future__ import annotations

import random

import optuna

from studies._config import Objective
from studies._front import Front, Point, front_of, hypervolume_history, reference_point
from studies._pareto import hypervolume, pareto_front

OBJECTIVES = [Objective("cpu/accuracy", "maximize"), Objective("cpu/latency_p50_ms", "minimize")]
DIRECTIONS = [o.direction for o in OBJECTIVES]


def test_incremental_front_matches_a_full_sort_and_reports_changes() -> None:
    rng = random.Random(0)
    front = Front(OBJECTIVES)
    points: list[tuple[float, float]] = []
    for n in range(300):
        p = (round(rng.random(), 2), round(rng.uniform(1, 5), 2))
        before = set(front.members)
        changed = front.add(Point(n, "complete", p))
        points.append(p)
        after = set(front.members)
        # `changed` names exactly the trials whose membership flipped, plus the new one
        flipped = (before ^ after) | {n}
        assert set(changed) == flipped
        assert all(changed[k] == (k in after) for k in changed)
    assert front.members == pareto_front(points, DIRECTIONS)
    ref = [0.0, 10.0]
    expected = hypervolume([points[i] for i in front.members], DIRECTIONS, ref)
    assert front.hypervolume(ref) == expected > 0


def test_only_complete_feasible_points_enter() -> None:
    front = Front(OBJECTIVES)
    assert front.add(Point(0, "infeasible", (1.0, 0.1))) == {}
    assert front.add(Point(1, "failed", None)) == {}
    assert front.add(Point(2, "complete", (0.5, 1.0), baseline=True)) == {2: True}
    assert front.members == [2]
    # reference: 0 for the maximized objective, twice the baseline's latency
    assert front.reference == [0.0, 2.0]
    assert reference_point(OBJECTIVES, None)[1] == float("inf")


def test_front_of_a_study_agrees_with_optuna_best_trials() -> None:
    study = optuna.create_study(directions=DIRECTIONS, sampler=optuna.samplers.RandomSampler(0))
    rng = random.Random(1)
    for _ in range(40):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        acc, lat = rng.random(), rng.uniform(1, 5)
        trial.set_constraint("cpu/latency_p50_ms <= 4", lat - 4)
        study.tell(trial, [acc, lat])
    ours = front_of(study.get_trials(), OBJECTIVES).members
    assert ours == sorted(t.number for t in study.best_trials)
    assert all(study.trials[n].values[1] <= 4 for n in ours)


def test_hypervolume_history_rises_to_the_final_front() -> None:
    study = optuna.create_study(directions=DIRECTIONS)
    for acc, lat in ((0.2, 2.0), (0.1, 3.0), (0.4, 2.5), (0.5, 1.0)):
        trial = study.ask()
        study.tell(trial, [acc, lat])
    history = hypervolume_history(study.get_trials(), OBJECTIVES)
    assert [k for k, _ in history] == [1, 2, 3, 4]
    hv = [v for _, v in history]
    assert hv == sorted(hv) and hv[1] == hv[0] and hv[-1] > hv[2]
