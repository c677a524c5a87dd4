"""The Pareto front of (cost, error) points: both lower is better."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """a is no worse than b on both axes and better on one."""
    return a[0] <= b[0] and a[1] <= b[1] and a != b


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points, by increasing cost (ties: equal points all stay)."""
    # Quadratic, on purpose: a study has tens of models, and this form is obviously the definition.
    front = [i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda i: points[i])
