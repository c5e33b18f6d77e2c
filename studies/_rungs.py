"""Early stopping that respects the front: asynchronous successive halving (ASHA) whose
promotion rule is the non-dominated rank, as MO-ASHA does (Schmucker et al. 2021;
Salinas et al. 2021; Syne Tune's `MOASHA` is the reference this follows).

A trial reports after every epoch. At a rung (epochs `grace_period * reduction_factor**k`,
below the full budget) it is compared with every trial that reached that rung before it
on a vector of (validation accuracy so far, the study's objectives known before
training: latency, size, coverage). All those vectors are sorted into non-dominated
fronts (0 is the best); the trial goes on when the share of them on a strictly better
front than its own is at most `1 / reduction_factor`, else it stops. So a fast model
with a modest accuracy so far is not stopped for being less accurate than a slow one:
nothing dominates it. With accuracy alone (`rank_by=accuracy`, what the project used
before: Ray's single-metric ASHA) the same rule keeps the top `1 / reduction_factor` by
accuracy.

The first trial at a rung always goes on (nothing to compare with), as in ASHA; a trial
that reaches a rung once is recorded there once. The rungs live in the driver's memory:
a resumed study (or a second driver on it) starts with empty rungs. Knows nothing of Ray
or Optuna: the Ray adapter (`_ray.py`) asks `ParetoRungs.stop` on every per-epoch
report, and `bench/early_stopping.py` replays recorded learning curves through the same
object.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._pareto import pareto_front

_WORST = {"maximize": -math.inf, "minimize": math.inf}


def milestones(grace_period: int, reduction_factor: int, max_epochs: int) -> list[int]:
    """The rungs' epochs: grace_period * reduction_factor**k below `max_epochs` (a trial
    that trains its full budget is never stopped at its end)."""
    rungs: list[int] = []
    epoch = grace_period
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return rungs


def front_ranks(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Non-dominated sorting: each point's front, 0 for the non-dominated ones, 1 for
    those that only points of front 0 dominate, and so on."""
    ranks = [0] * len(points)
    left = list(range(len(points)))
    rank = 0
    while left:
        front = {left[i] for i in pareto_front([points[j] for j in left], directions)}
        for i in front:
            ranks[i] = rank
        left = [i for i in left if i not in front]
        rank += 1
    return ranks


@dataclass
class ParetoRungs:
    """The rungs of one study (see the module docstring).

    `metrics` and `directions`: what a rung compares, in order; the first is the
    per-epoch `val_accuracy`, the others are read from the same report (the trial adds
    its untrained step's values to every per-epoch report)."""

    rungs: list[int]
    reduction_factor: int
    metrics: list[str]
    directions: list[str]
    # rung epoch -> trial id -> the vector it reached that rung with
    recorded: dict[int, dict[str, list[float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.metrics) != len(self.directions) or not self.metrics:
            raise ValueError(f"metrics {self.metrics} and directions {self.directions}")
        for epoch in self.rungs:
            self.recorded.setdefault(epoch, {})

    def stop(self, trial: str, result: Mapping[str, Any]) -> bool:
        """Whether `trial` stops after the epoch `result` reports (`epoch`, and every
        one of `metrics`; a report without `epoch` is not a rung's)."""
        epoch = result.get("epoch")
        if epoch is None or int(epoch) not in self.recorded:
            return False
        recorded = self.recorded[int(epoch)]
        if trial in recorded:  # reported this epoch again (a cached training replays it)
            return False
        missing = [m for m in self.metrics if m not in result]
        if missing:
            raise KeyError(f"a per-epoch report lacks {missing}; it has {sorted(result)}")
        # a NaN (a diverged training) is the worst value, never incomparable
        values = [
            float(result[m]) if math.isfinite(float(result[m])) else _WORST[d]
            for m, d in zip(self.metrics, self.directions, strict=True)
        ]
        points = [*recorded.values(), values]
        ranks = front_ranks(points, self.directions)
        better = sum(r < ranks[-1] for r in ranks)
        recorded[trial] = values
        return better / len(points) > 1.0 / self.reduction_factor
