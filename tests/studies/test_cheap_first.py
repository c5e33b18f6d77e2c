"""The `auto` sampler (`studies._cheap_first.CheapFirst`): its hypervolume arithmetic,
that it trains where its surrogate expects the front to move, and its replay."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from studies._cheap_first import CheapFirst, _improvement_2d
from studies._config import ConfigError
from studies._pareto import hypervolume
from studies._replay import ReplayTable, replay, replay_one
from tests.studies.test_replay import OBJECTIVES, PARAMS, _rows, _write


def test_2d_improvement_matches_exact_hypervolume() -> None:
    rng = np.random.default_rng(0)
    front = rng.random((6, 2))
    ref = np.array([1.2, 1.1])
    points = rng.random((50, 2)) * 1.3
    base = hypervolume(front.tolist(), ["minimize"] * 2, ref.tolist())
    exact = [
        hypervolume([*front.tolist(), p.tolist()], ["minimize"] * 2, ref.tolist()) - base
        for p in points
    ]
    assert _improvement_2d(front, points, ref) == pytest.approx(exact, abs=1e-12)


def _space() -> tuple[dict[str, list[int]], dict[tuple[int, int], tuple[float, float]]]:
    """8 x 8 configurations: accuracy grows with a (smoothly), latency with a and b; the
    front is b = 0 at every a."""
    choices = {"a": list(range(8)), "b": list(range(8))}
    table = {
        (a, b): (1 - 0.6 * 0.7**a, 1.0 + a + 2.0 * b)
        for a, b in itertools.product(range(8), range(8))
    }
    return choices, table


def test_it_trains_the_candidate_its_surrogate_expects_on_the_front() -> None:
    choices, table = _space()
    chooser = CheapFirst(
        choices, ["maximize", "minimize"], [False, True], seed=0, cheap_per_training=64, startup=4
    )
    measured: list[tuple[int, int]] = []

    def cheap(p: dict[str, int]) -> list[float]:
        measured.append((p["a"], p["b"]))
        return [float("nan"), table[p["a"], p["b"]][1]]

    def draw(rng: random.Random) -> dict[str, int]:
        return {"a": rng.randrange(8), "b": rng.randrange(8)}

    for _ in range(12):
        p = chooser.propose(draw, cheap)
        assert p is not None
        chooser.tell(p, table[p["a"], p["b"]])
    assert len(measured) == len(set(measured)) <= 12 * 64  # each cheap read once
    after_start = [k for k in list(chooser.trained)[4:]]
    # b > 0 only costs latency: past the random start nearly all trainings are at b = 0
    assert sum(b == 0 for _, b in after_start) >= 6, after_start
    assert "expected hypervolume improvement" in chooser.last_reason


def test_constraint_breakers_are_measured_but_never_trained() -> None:
    choices, table = _space()
    chooser = CheapFirst(choices, ["maximize", "minimize"], [False, True], startup=2)

    def cheap(p: dict[str, int]) -> list[float] | None:
        lat = table[p["a"], p["b"]][1]
        return None if lat > 6 else [float("nan"), lat]  # a latency budget

    def draw(rng: random.Random) -> dict[str, int]:
        return {"a": rng.randrange(8), "b": rng.randrange(8)}

    while (p := chooser.propose(draw, cheap)) is not None:
        assert table[p["a"], p["b"]][1] <= 6
        chooser.tell(p, table[p["a"], p["b"]])
    feasible = {k for k, v in table.items() if v[1] <= 6}
    assert set(chooser.trained) == feasible  # all found, then None: nothing left


def test_auto_replays_counting_cheap_reads(tmp_path) -> None:
    table = ReplayTable.load(_write(tmp_path / "t.csv", _rows()), PARAMS, OBJECTIVES, ["lat_ms"])
    run = replay_one(table, "auto", seed=1, trainings=12, ref=[0.0, 8.0], baseline_row=5)
    assert run.trained_rows[0] == 5
    assert sorted(run.trained_rows) == list(range(12))
    assert run.shares[-1] == pytest.approx(1.0)
    assert run.cheap_rows == 12
    again = replay_one(table, "auto", seed=1, trainings=12, ref=[0.0, 8.0], baseline_row=5)
    assert again.trained_rows == run.trained_rows  # seeded
    out = replay(table, ["auto"], seeds=2, trainings=6, processes=1, cheap_per_training=3)
    assert out["cheap_per_training"] == 3
    assert all(s["cheap_rows"] <= 6 * 3 + 1 for s in out["samplers"]["auto"]["seeds"])


def test_auto_needs_cheap_columns(tmp_path) -> None:
    table = ReplayTable.load(_write(tmp_path / "t.csv", _rows()), PARAMS, OBJECTIVES, [])
    with pytest.raises(ConfigError, match="auto measures cheap objectives first"):
        replay(table, ["auto"], seeds=1, trainings=3, processes=1)


def test_conditional_parameters_and_trained_infeasible_candidates() -> None:
    """`n` applies only where kind == "y" (as a conditional search-space parameter);
    mutations go through `complete`, so no proposal carries a parameter that does not
    apply, or lacks one that does. A trained candidate told infeasible informs the
    surrogate but never enters the front that mutations start from."""
    choices = {"kind": ["x", "y"], "n": [1, 2, 3], "m": [0, 1, 2, 3]}

    def complete(p: dict[str, object], rng: random.Random) -> dict[str, object]:
        out = {"kind": p["kind"], "m": p["m"]}
        if out["kind"] == "y":
            out["n"] = p["n"] if p.get("n") in choices["n"] else rng.choice(choices["n"])
        return out

    def draw(rng: random.Random) -> dict[str, object]:
        return complete({"kind": rng.choice(["x", "y"]), "m": rng.randrange(4)}, rng)

    def score(p: dict[str, object]) -> tuple[float, float]:
        n = int(p.get("n", 0))  # type: ignore[call-overload]
        return 0.5 + 0.1 * n + 0.05 * int(p["m"]), 1.0 + n + int(p["m"])  # type: ignore[call-overload]

    chooser = CheapFirst(
        choices, ["maximize", "minimize"], [False, True], startup=2, complete=complete
    )
    infeasible_key = None
    for step in range(10):
        p = chooser.propose(draw, lambda p: [float("nan"), score(p)[1]])
        if p is None:
            break
        assert ("n" in p) == (p["kind"] == "y"), p
        feasible = step != 1
        chooser.tell(p, score(p), feasible=feasible)
        if not feasible:
            infeasible_key = chooser.key(p)
    assert infeasible_key is not None
    assert all(chooser.key(p) != infeasible_key for p in chooser._front_params())
    # a candidate whose training failed is never proposed again
    failed = draw(random.Random(5))
    chooser.forget(failed)
    assert chooser.key(failed) in chooser.measured
    assert chooser.key(failed) not in chooser.pool
