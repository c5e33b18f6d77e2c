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


def hypervolume(
    points: Sequence[Sequence[float]], directions: Sequence[str], reference: Sequence[float]
) -> float:
    """Volume dominated by `points` and bounded by `reference` (exact, by slicing).

    Points that do not strictly beat the reference in every objective add nothing.
    Cost grows as n^k: meant for study-sized fronts (tens of points, 2-3 objectives).
    """
    flip = [-1.0 if d == "maximize" else 1.0 for d in directions]
    ref = [r * f for r, f in zip(reference, flip, strict=True)]
    pts = [[v * f for v, f in zip(p, flip, strict=True)] for p in points]
    pts = [p for p in pts if all(v < r for v, r in zip(p, ref, strict=True))]
    return _hv_min(pts, ref)


def _hv_min(points: list[list[float]], ref: list[float]) -> float:
    if not points:
        return 0.0
    if len(ref) == 1:
        return ref[0] - min(p[0] for p in points)
    points = sorted(points, key=lambda p: p[-1])
    volume = 0.0
    for i, p in enumerate(points):
        upper = points[i + 1][-1] if i + 1 < len(points) else ref[-1]
        if upper > p[-1]:
            volume += _hv_min([q[:-1] for q in points[: i + 1]], ref[:-1]) * (upper - p[-1])
    return volume
