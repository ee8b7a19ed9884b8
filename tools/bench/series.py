"""Time series of several runs of one measure (a recovery's progress, the foreground MiB/s during
it) brought onto one time grid and summarized point by point as a median with min-max, so that
a plot of N runs shows one line and the band the runs spanned.
"""
from __future__ import annotations

import statistics
from typing import Callable


def progress_at(points: list[list[float]]) -> Callable[[float], float]:
    """The share copied at time t of one run: 0 at t=0, linear between the polls, and the last
    value (1 once done) after the last poll."""
    pts = [(0.0, 0.0)] + [(float(t), float(v)) for t, v in points if t >= 0]

    def at(t: float) -> float:
        if t <= 0:
            return 0.0
        for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
            if t <= t1:
                return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1
        return pts[-1][1]

    return at


def rate_at(points: list[list[float]]) -> Callable[[float], float | None]:
    """The MiB/s of one run at time t from its bandwidth log (entry i holds for (t[i-1], t[i]]; the
    first for the 0.1 s before it); None outside the log."""
    pts = sorted((float(t), float(v)) for t, v in points)

    def at(t: float) -> float | None:
        prev = pts[0][0] - 0.1 if pts else 0.0
        for ti, v in pts:
            if prev < t <= ti:
                return v
            prev = ti
        return None

    return at


def band(runs: list[Callable[[float], float | None]], start: float, end: float,
         step: float) -> list[tuple[float, float, float, float]]:
    """(t, median, min, max) of the runs' values every step seconds from start to end, at the
    times where at least one run has a value."""
    out = []
    n = int(round((end - start) / step))
    for i in range(n + 1):
        t = round(start + i * step, 6)
        values = [v for v in (f(t) for f in runs) if v is not None]
        if values:
            out.append((t, statistics.median(values), min(values), max(values)))
    return out


def grid_step(end: float, points: int = 400) -> float:
    """A step that puts about points samples between 0 and end (at least 10 ms)."""
    return max(0.01, end / points)
