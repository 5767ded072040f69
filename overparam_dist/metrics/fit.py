"""The one least-squares line fit: the convergence rate, the report's slopes and the demo's table all use it."""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class LineFit(NamedTuple):
    slope: float
    intercept: float
    slope_se: float | None  # standard error of the slope; None without residual degrees of freedom


def fit_line(x: Sequence[float], y: Sequence[float]) -> LineFit | None:
    """Ordinary least squares y = intercept + slope * x; None with fewer than two points or constant x."""
    xs, ys = [float(v) for v in x], [float(v) for v in y]
    n = len(xs)
    if n < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    if sxx == 0:
        return None
    slope = sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sxx
    intercept = my - slope * mx
    if n <= 2:
        return LineFit(slope, intercept, None)
    rss = sum((b - intercept - slope * a) ** 2 for a, b in zip(xs, ys))
    return LineFit(slope, intercept, math.sqrt(rss / (n - 2) / sxx))


def loglog_slope(xs: Sequence[float], ys: Sequence[float | None]) -> float | None:
    """Least-squares slope of log y on log x over the positive pairs (None with fewer than two)."""
    pts = [(math.log(a), math.log(b)) for a, b in zip(xs, ys) if b is not None and b > 0 and a > 0]
    fit = fit_line([p[0] for p in pts], [p[1] for p in pts])
    return None if fit is None else fit.slope
