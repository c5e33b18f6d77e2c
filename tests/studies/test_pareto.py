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


def test_hypervolume_hand_examples() -> None:
    from studies._pareto import hypervolume

    mm = ["minimize", "minimize"]
    # one point: a rectangle 2 x 3
    assert hypervolume([(1, 1)], mm, (3, 4)) == 6
    # two points, staircase: (1,3) and (2,1) under ref (4,4): 3*1 + 2*2 = 7
    assert hypervolume([(1, 3), (2, 1)], mm, (4, 4)) == 7
    # a dominated point adds nothing; a point outside the reference adds nothing
    assert hypervolume([(1, 3), (2, 1), (3, 3), (5, 0)], mm, (4, 4)) == 7
    # maximize accuracy, minimize latency: (0.8, 2) and (0.6, 1) against (0, 3)
    assert (
        abs(
            hypervolume([(0.8, 2.0), (0.6, 1.0)], ["maximize", "minimize"], (0.0, 3.0))
            - (0.8 * 1 + 0.6 * 1)
        )
        < 1e-12
    )
    # three objectives: unit cube corner
    assert hypervolume([(0, 0, 0)], ["minimize"] * 3, (1, 2, 3)) == 6


@pytest.mark.parametrize("seed", range(5))
def test_hypervolume_matches_grid_count(seed: int) -> None:
    from studies._pareto import hypervolume

    rng = random.Random(seed)
    points = [(rng.randint(0, 9), rng.randint(0, 9), rng.randint(0, 9)) for _ in range(8)]
    ref = (10, 10, 10)
    # count unit cells [x, x+1) x ... dominated by some point (integer coordinates: exact)
    cells = sum(
        any(p[0] <= x and p[1] <= y and p[2] <= z for p in points)
        for x in range(10)
        for y in range(10)
        for z in range(10)
    )
    assert hypervolume(points, ["minimize"] * 3, ref) == cells
