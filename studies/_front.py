"""The feasible Pareto front: the one definition every reader of a study uses.

A trial is on the front when it is COMPLETE, feasible (every constraint value Optuna
holds for it is <= 0, the rule `optuna.Study.best_trials` applies) and no other such
trial dominates it. The progress line, the `pareto` tags in MLflow, pareto.csv/json,
report.html and `vlmnas export` all read it from here.

`Front` keeps the front incrementally: adding a point costs O(front size), not O(trials
so far), so a driver's per-trial cost does not grow with the study.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from ._config import Objective
from ._pareto import dominates, hypervolume


def feasible(trial: optuna.trial.FrozenTrial) -> bool:
    """Every constraint value is <= 0. Studies written before constraint values were
    stored for every sampler mark infeasibility only by the `infeasible` user attribute."""
    values = trial.constraints.values()
    if values:
        return all(v <= 0.0 for v in values)
    return not trial.user_attrs.get("infeasible")


def state_of(trial: optuna.trial.FrozenTrial) -> str:
    """How the dashboards name a trial's state: complete (and feasible), infeasible,
    pruned, failed, or running (also waiting)."""
    if trial.state == TrialState.COMPLETE:
        return "complete" if feasible(trial) else "infeasible"
    return {TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}.get(trial.state, "running")


@dataclass(frozen=True)
class Point:
    """A finished trial as the front sees it."""

    number: int
    state: str  # complete | infeasible | pruned | failed
    values: tuple[float, ...] | None  # objectives in study order; None unless told COMPLETE
    baseline: bool = False

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> Point:
        values = tuple(float(v) for v in trial.values) if trial.values else None
        return cls(trial.number, state_of(trial), values, bool(trial.user_attrs.get("baseline")))


def reference_point(
    objectives: Sequence[Objective], baseline: Sequence[float] | None
) -> list[float]:
    """Hypervolume reference: each objective's `reference`, else 0 when maximizing and
    twice the baseline's value when minimizing (`baseline`: the baseline trial's values,
    or the first feasible trial's when the baseline is not feasible)."""
    ref = []
    for i, o in enumerate(objectives):
        if o.reference is not None:
            ref.append(float(o.reference))
        elif o.direction == "maximize":
            ref.append(0.0)
        else:
            ref.append(2.0 * baseline[i] if baseline is not None else math.inf)
    return ref


class Front:
    """The feasible front of the points added so far, with its hypervolume."""

    def __init__(self, objectives: Sequence[Objective]) -> None:
        self.objectives = list(objectives)
        self.directions = [o.direction for o in objectives]
        self._members: dict[int, tuple[float, ...]] = {}
        self._baseline: tuple[float, ...] | None = None
        self._first: tuple[float, ...] | None = None

    def add(self, point: Point) -> dict[int, bool]:
        """Add a finished trial; returns the trials whose membership changed
        (number -> now on the front). Non-feasible points change nothing."""
        if point.state != "complete" or point.values is None:
            return {}
        values = point.values
        if point.baseline and self._baseline is None:
            self._baseline = values
        if self._first is None:
            self._first = values
        if any(dominates(m, values, self.directions) for m in self._members.values()):
            return {point.number: False}
        beaten = [n for n, m in self._members.items() if dominates(values, m, self.directions)]
        for n in beaten:
            del self._members[n]
        self._members[point.number] = values
        return {point.number: True, **dict.fromkeys(beaten, False)}

    @property
    def members(self) -> list[int]:
        """Trial numbers on the front, ascending."""
        return sorted(self._members)

    def values(self, number: int) -> tuple[float, ...]:
        return self._members[number]

    @property
    def reference(self) -> list[float]:
        return reference_point(self.objectives, self._baseline or self._first)

    def hypervolume(self, reference: Sequence[float] | None = None) -> float:
        ref = list(reference) if reference is not None else self.reference
        return hypervolume(list(self._members.values()), self.directions, ref)


def front_of(trials: Iterable[optuna.trial.FrozenTrial], objectives: Sequence[Objective]) -> Front:
    """The front of a study's trials (any order: membership does not depend on it)."""
    front = Front(objectives)
    for trial in sorted(trials, key=lambda t: t.number):
        if trial.state == TrialState.COMPLETE:
            front.add(Point.of(trial))
    return front


def hypervolume_history(
    trials: Sequence[optuna.trial.FrozenTrial], objectives: Sequence[Objective]
) -> list[tuple[int, float]]:
    """(finished trials so far, hypervolume of the feasible front then), in finishing
    order, all against the final front's reference point."""
    finished = sorted(
        (t for t in trials if t.datetime_complete is not None),
        key=lambda t: (t.datetime_complete, t.number),
    )
    reference = front_of(finished, objectives).reference
    front = Front(objectives)
    history = []
    for k, trial in enumerate(finished, 1):
        if trial.state == TrialState.COMPLETE:
            front.add(Point.of(trial))
        history.append((k, front.hypervolume(reference)))
    return history
