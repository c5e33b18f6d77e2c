"""How a trial ended: pure decisions from what the trial reported to what Optuna and
MLflow record. The driver calls `decide` once per trial, in one place (the end path in
`_book.py`), and hands its `Outcome` to both stores, so they cannot disagree.

A trial reports plain dicts (Ray Tune results). Its ways to end:

| last report                                 | Ray error | state      | Optuna   |
|---------------------------------------------|-----------|------------|----------|
| final, objectives finite                    | no        | complete   | COMPLETE |
| final, `infeasible` reason                  | no        | infeasible | COMPLETE (worst where unmeasured), constraint values > 0 |
| final, an objective missing or NaN          | no        | failed     | FAIL     |
| `error` (the trial raised; `_ray.py` catches it) | no   | failed     | FAIL     |
| a per-epoch report (the scheduler stopped it) | no      | pruned     | PRUNED   |
| anything or nothing                         | yes (the worker died) | failed | FAIL |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from dashboards import TrialRecord

from ._config import GLOBAL_METRICS, Constraint, Objective

# Result keys that become MLflow metrics beside every "<profile>/<metric>": the metrics
# objectives may name, and the training time.
LOGGED_GLOBALS = (*GLOBAL_METRICS, "train_s")
# Result keys (by suffix) that become MLflow tags: facts, not numbers.
TAG_SUFFIXES = (
    "/latency_source",
    "/latency_quality",
    "/generation",
    "/scheme",
    "/runtime",
    "/device",
)


@dataclass(frozen=True)
class Outcome:
    state: str  # complete | pruned | failed | infeasible, as the dashboards name them
    values: tuple[float | None, ...] | None  # objectives as measured; None: not told
    reason: str = ""
    # Constraint text -> violation (<= 0 satisfied), for complete and infeasible trials.
    violations: Mapping[str, float] = field(default_factory=dict)


def _finite(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def decide(
    result: Mapping[str, Any] | None,
    error: str | None,
    objectives: Sequence[Objective],
    constraints: Sequence[Constraint] = (),
) -> Outcome:
    """The trial's outcome from its last report (`result`) and Ray's error, if any."""
    if error is not None:
        return Outcome("failed", None, error)
    if not result:
        return Outcome("failed", None, "trial ended without reporting")
    if "error" in result:
        return Outcome("failed", None, str(result["error"]))
    if not result.get("final"):
        return Outcome(
            "pruned", None, f"stopped early by the scheduler after epoch {result.get('epoch')}"
        )
    metrics = [o.metric for o in objectives]
    values = tuple(_finite(result.get(m)) for m in metrics)
    # An unmeasured metric (an untrained trial's accuracy) satisfies its constraint: the
    # trial is infeasible already through the one it broke.
    violations = {}
    for c in constraints:
        value = _finite(result.get(c.metric))
        violations[str(c)] = c.violation(value) if value is not None else 0.0
    if result.get("infeasible"):
        return Outcome("infeasible", values, str(result["infeasible"]), violations)
    if any(v is None for v in values):
        shown = {m: result.get(m) for m in metrics}
        return Outcome("failed", None, f"objective values missing or not finite: {shown}")
    broken = [k for k, v in violations.items() if v > 0]
    if broken:  # a trial that did not check its own constraints
        return Outcome("infeasible", values, "; ".join(broken), violations)
    return Outcome("complete", values, "", violations)


def optuna_verdict(
    outcome: Outcome, directions: Sequence[str]
) -> tuple[TrialState, list[float] | None]:
    """What to tell Optuna. An infeasible trial is COMPLETE (constrained samplers learn
    from it) with its measured values, and the worst value where it measured none; its
    constraint values keep it off every front."""
    if outcome.state in ("complete", "infeasible"):
        assert outcome.values is not None
        worst = {"maximize": -math.inf, "minimize": math.inf}
        values = [
            v if v is not None else worst[d]
            for v, d in zip(outcome.values, directions, strict=True)
        ]
        return TrialState.COMPLETE, values
    return (TrialState.PRUNED if outcome.state == "pruned" else TrialState.FAIL), None


def reason_attr(outcome: Outcome) -> str | None:
    """The Optuna user attribute (and MLflow tag) that carries the reason."""
    return {
        "failed": "fail_reason",
        "pruned": "pruned_reason",
        "infeasible": "infeasible",
    }.get(outcome.state)


def mlflow_record(
    number: int,
    outcome: Outcome,
    result: Mapping[str, Any] | None,
    *,
    params: Mapping[str, Any],
    arch_id: str,
    trial_dir: Path,
    history: Sequence[float],
) -> TrialRecord:
    """The trial's MLflow child run: numeric metrics, facts as tags, its config and
    metrics files, the per-epoch validation accuracy."""
    result = result or {}
    metrics = {
        k: float(v)
        for k, v in result.items()
        if ("/" in k or k in LOGGED_GLOBALS) and _finite(v) is not None
    }
    tags = {"arch_id": arch_id, "trial_number": str(number)}
    tags.update(
        {k: str(v) for k, v in result.items() if k.endswith(TAG_SUFFIXES) or k == "ray_node"}
    )
    attr = reason_attr(outcome)
    if attr is not None:
        tags["infeasible_reason" if attr == "infeasible" else attr] = outcome.reason
    return TrialRecord(
        number=number,
        state=outcome.state,
        params=dict(params),
        metrics=metrics,
        tags=tags,
        artifacts=(trial_dir / "config.yaml", trial_dir / "metrics.json"),
        series={"val_accuracy": list(history)},
    )
