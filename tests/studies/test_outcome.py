"""How a trial ended, decided once (`studies._outcome`): one row per way to end, from
the trial's last report to Optuna's state and values and the MLflow record."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from studies._config import Constraint, Objective
from studies._outcome import decide, mlflow_record, optuna_verdict

OBJECTIVES = [Objective("cpu/accuracy", "maximize"), Objective("cpu/latency_p50_ms", "minimize")]
DIRECTIONS = [o.direction for o in OBJECTIVES]
CONSTRAINTS = [Constraint.parse("cpu/latency_p50_ms <= 2"), Constraint.parse("cpu/accuracy >= 0.3")]
MEASURED = {"final": True, "cpu/accuracy": 0.5, "cpu/latency_p50_ms": 1.0, "val_accuracy": 0.6}

# (name, last report, Ray error, state, Optuna state, values told, reason contains)
CASES: list[tuple[str, dict[str, Any] | None, str | None, str, TrialState, Any, str]] = [
    ("complete", MEASURED, None, "complete", TrialState.COMPLETE, [0.5, 1.0], ""),
    (
        "pruned by the scheduler",
        {"epoch": 2, "val_accuracy": 0.2},
        None,
        "pruned",
        TrialState.PRUNED,
        None,
        "after epoch 2",
    ),
    (
        "fail by exception",
        {"error": "RuntimeError: export failed", "traceback": "..."},
        None,
        "failed",
        TrialState.FAIL,
        None,
        "RuntimeError: export failed",
    ),
    (
        "fail by NaN objective",
        {**MEASURED, "cpu/accuracy": math.nan},
        None,
        "failed",
        TrialState.FAIL,
        None,
        "not finite",
    ),
    (
        "fail by missing objective",
        {"final": True, "cpu/latency_p50_ms": 1.0},
        None,
        "failed",
        TrialState.FAIL,
        None,
        "missing",
    ),
    ("fail: worker died", MEASURED, "worker died", "failed", TrialState.FAIL, None, "worker died"),
    ("fail: nothing reported", None, None, "failed", TrialState.FAIL, None, "without reporting"),
    (
        "infeasible before training",
        {"final": True, "cpu/latency_p50_ms": 3.0, "infeasible": "cpu/latency_p50_ms <= 2"},
        None,
        "infeasible",
        TrialState.COMPLETE,
        [-math.inf, 3.0],
        "cpu/latency_p50_ms <= 2",
    ),
    (
        "infeasible after training",
        {**MEASURED, "cpu/accuracy": 0.1, "infeasible": "cpu/accuracy >= 0.3 (measured 0.1)"},
        None,
        "infeasible",
        TrialState.COMPLETE,
        [0.1, 1.0],
        "cpu/accuracy >= 0.3",
    ),
    (
        "infeasible but not flagged by the trial",
        {**MEASURED, "cpu/latency_p50_ms": 2.5},
        None,
        "infeasible",
        TrialState.COMPLETE,
        [0.5, 2.5],
        "cpu/latency_p50_ms <= 2",
    ),
]


@pytest.mark.parametrize(
    ("result", "error", "state", "optuna_state", "told", "reason"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_each_way_to_end(
    result: dict[str, Any] | None,
    error: str | None,
    state: str,
    optuna_state: TrialState,
    told: list[float] | None,
    reason: str,
) -> None:
    outcome = decide(result, error, OBJECTIVES, CONSTRAINTS)
    assert outcome.state == state
    assert reason in outcome.reason
    verdict, values = optuna_verdict(outcome, DIRECTIONS)
    assert verdict == optuna_state and values == told
    record = mlflow_record(
        7,
        outcome,
        result,
        params={"lm.depth": 2},
        arch_id="abc",
        trial_dir=Path("/x/7"),
        history=[0.1, 0.2],
    )
    assert record.state == state and record.tags["trial_number"] == "7"
    reason_tag = {"failed": "fail_reason", "pruned": "pruned_reason"}.get(
        state, "infeasible_reason" if state == "infeasible" else None
    )
    if reason_tag:
        assert reason in record.tags[reason_tag]
    assert all(math.isfinite(v) for v in record.metrics.values())


def test_constraint_values_mark_feasibility_where_optuna_reads_it() -> None:
    """Infeasibility is stored once, as Optuna's constraint values: `best_trials` and
    the samplers see what vlmnas sees."""
    study = optuna.create_study(directions=DIRECTIONS)
    for result in (MEASURED, {**MEASURED, "cpu/accuracy": 0.9, "cpu/latency_p50_ms": 2.5}):
        outcome = decide(result, None, OBJECTIVES, CONSTRAINTS)
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        for name, violation in outcome.violations.items():
            trial.set_constraint(name, violation)
        state, values = optuna_verdict(outcome, DIRECTIONS)
        study.tell(trial, values, state=state)
    # the second trial dominates the first but breaks the latency constraint
    assert [t.number for t in study.best_trials] == [0]
    assert study.trials[1].constraints == {
        "cpu/latency_p50_ms <= 2": pytest.approx(0.5),
        "cpu/accuracy >= 0.3": pytest.approx(-0.6),
    }
