"""Constraint parsing, the cheap-first split, and how an infeasible trial is told."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from studies import ConfigError, load_config
from studies._config import Constraint
from studies._front import front_of, state_of
from studies._outcome import decide, optuna_verdict
from studies._samplers import make_sampler
from studies._storage import open_storage


def test_constraint_parsing_and_violation() -> None:
    c = Constraint.parse("cpu/latency_p95_ms <= 20")
    assert (c.metric, c.op, c.bound) == ("cpu/latency_p95_ms", "<=", 20.0) and c.cheap
    assert c.violation(25.0) == 5.0 and c.violation(10.0) == -10.0
    cov = Constraint.parse("npu_htp/npu_coverage>=1")
    assert cov.cheap and cov.violation(0.9) == pytest.approx(0.1) and cov.violation(1.0) == 0.0
    assert not Constraint.parse("cpu/accuracy >= 0.4").cheap
    assert Constraint.parse("params <= 1e6").cheap
    with pytest.raises(ConfigError, match="write 'profile/metric <= number'"):
        Constraint.parse("cpu/latency_p95_ms == 3")


def test_constraints_are_validated_at_load() -> None:
    with pytest.raises(ConfigError, match="study.constraints metric 'cpu/latency'"):
        load_config(['study.constraints=["cpu/latency <= 3"]'])
    with pytest.raises(ConfigError, match="study.storage='mysql'"):
        load_config(["study.storage=mysql"])
    with pytest.raises(ConfigError, match="study.tracking_uri='localhost'"):
        load_config(["study.tracking_uri=localhost"])


def test_infeasible_outcome_keeps_measured_values_and_fills_the_rest() -> None:
    objectives = load_config().study.objectives  # cpu/accuracy (max), cpu/latency_p50_ms (min)
    result = {"final": True, "infeasible": "cpu/latency_p50_ms <= 1 (measured 2)"}
    result["cpu/latency_p50_ms"] = 2.0
    outcome = decide(result, None, objectives)
    assert outcome.state == "infeasible" and outcome.values == (None, 2.0)
    assert optuna_verdict(outcome, ["maximize", "minimize"])[1] == [-math.inf, 2.0]


@pytest.mark.parametrize("sampler", ["nsga2", "tpe", "gp", "random"])
def test_front_excludes_infeasible_trials_and_samplers_get_the_violations(sampler: str) -> None:
    cfg = load_config(['study.constraints=["cpu/size_mb <= 1"]', f"study.sampler={sampler}"])
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(cfg.study)
    )
    for size in (0.5, 3.0):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_constraint("cpu/size_mb <= 1", size - 1.0)
        study.tell(trial, [0.5, size])
    trials = study.get_trials()
    assert [state_of(t) for t in trials] == ["complete", "infeasible"]
    assert front_of(trials, cfg.study.objectives).members == [0]
    # what constrained samplers read, for every sampler (random ignores it)
    assert trials[1].constraints == {"cpu/size_mb <= 1": 2.0}
    assert [t.number for t in study.best_trials] == [0]


def test_journal_storage_for_several_drivers(tmp_path: Path) -> None:
    cfg = load_config([f"study.storage=journal:{tmp_path / 'j' / 'study.log'}"])
    storage = open_storage(cfg)
    optuna.create_study(study_name="a", storage=storage)
    again = open_storage(cfg)  # a second driver opening the same file
    assert [s.study_name for s in optuna.get_all_study_summaries(again)] == ["a"]
