from __future__ import annotations

import itertools
import random

import pytest

from studies import dominates, pareto_front


def _brute(points, directions):
    return [i for i, p in enumerate(points) if not any(dominates(q, p, directions) for q in points)]


@pytest.mark.parametrize("seed", range(20))
def test_front_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    k = rng.choice([2, 3])
    directions = [rng.choice(["maximize", "minimize"]) for _ in range(k)]
    # small integer grid: many ties and duplicates
    points = [[rng.randint(0, 5) for _ in range(k)] for _ in range(rng.randint(1, 40))]
    assert pareto_front(points, directions) == _brute(points, directions)


def test_hand_example() -> None:
    # (accuracy max, latency min)
    points = [(0.9, 10.0), (0.8, 5.0), (0.7, 6.0), (0.9, 12.0), (0.5, 1.0), (0.8, 5.0)]
    assert pareto_front(points, ["maximize", "minimize"]) == [0, 1, 4, 5]


def test_dominates_definition() -> None:
    d = ["minimize", "minimize"]
    assert dominates((1, 1), (1, 2), d)
    assert not dominates((1, 1), (1, 1), d)
    assert not any(
        dominates(a, b, d) and dominates(b, a, d)
        for a, b in itertools.permutations([(0, 2), (2, 0), (1, 1)], 2)
    )
