"""Percentiles and summaries of latency samples (seconds in, milliseconds or microseconds out)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q ≤ 100) of ``samples``; ``nan`` when there are none.

    Nearest rank (not interpolation) so p99 of 200 samples is an observed value, the 2nd largest.
    """
    if not samples:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"percentile q must be in (0, 100], got {q}")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: Sequence[float], scale: float = 1e3) -> dict[str, float]:
    """n, min, p50, p90, p99, max and mean of ``samples`` multiplied by ``scale`` (default: s → ms)."""
    if not samples:
        nan = math.nan
        return {"n": 0, "min": nan, "p50": nan, "p90": nan, "p99": nan, "max": nan, "mean": nan}
    return {
        "n": len(samples),
        "min": min(samples) * scale,
        "p50": percentile(samples, 50) * scale,
        "p90": percentile(samples, 90) * scale,
        "p99": percentile(samples, 99) * scale,
        "max": max(samples) * scale,
        "mean": sum(samples) / len(samples) * scale,
    }


def fmt(value: float, digits: int = 2) -> str:
    """A number for a Markdown cell: ``–`` for nan/None, otherwise fixed point with ``digits``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"
