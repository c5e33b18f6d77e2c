"""Non-dominated sorting over objective vectors."""

from __future__ import annotations

from collections.abc import Sequence

DIRECTIONS = ("maximize", "minimize")


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """`a` is at least as good as `b` everywhere and strictly better somewhere."""
    better = False
    for x, y, d in zip(a, b, directions, strict=True):
        if d == "maximize":
            x, y = -x, -y
        if x > y:
            return False
        better |= x < y
    return better


def pareto_front(points: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in input order.

    Points are visited best-first in lexicographic order (after turning every objective
    into one to minimise); a point can only be dominated by one visited before it, and if
    it is dominated at all, then by a point already on the front (dominance is
    transitive), so each point is checked against the front only. Identical points do
    not dominate each other: all copies stay on the front.
    """
    for d in directions:
        if d not in DIRECTIONS:
            raise ValueError(f"direction {d!r}; allowed {list(DIRECTIONS)}")
    keyed = [
        tuple(-v if d == "maximize" else v for v, d in zip(p, directions, strict=True))
        for p in points
    ]
    order = sorted(range(len(points)), key=lambda i: keyed[i])
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i], directions) for j in front):
            front.append(i)
    return sorted(front)
