"""Convergence: fitted rate of log-loss over a trailing window, and the first step that fits."""

from __future__ import annotations

import math
from collections import deque

from .fit import fit_line


def log_loss_slope(steps: list[int], losses: list[float]) -> float | None:
    """Least-squares slope of log(loss) against step (negative while converging linearly)."""
    pts = [(s, math.log(v)) for s, v in zip(steps, losses) if v > 0 and math.isfinite(v)]
    fit = fit_line([s for s, _ in pts], [v for _, v in pts])
    return None if fit is None else fit.slope


class ConvergenceTracker:
    """The (step, loss) points of the last `window` steps, and the first step seen to fit.

    The window counts steps, not points: full-batch GD gives a point every step, mini-batch SGD only on logged
    rows (every metrics.every steps), and both then fit the rate over the same stretch of training.
    A step seen again replaces what was seen from it on: a trial resumed from its final checkpoint (killed before its
    summary was written) measures that step a second time, and a point counted twice would tilt the fitted rate.
    """

    def __init__(self, window: int):
        self.steps = window
        self.window: deque[tuple[int, float]] = deque()
        self.steps_to_fit: int | None = None

    def update(self, step: int, loss: float, fitted: bool) -> None:
        while self.window and self.window[-1][0] >= step:
            self.window.pop()
        self.window.append((step, loss))
        while self.window[0][0] <= step - self.steps:
            self.window.popleft()
        if fitted and self.steps_to_fit is None:
            self.steps_to_fit = step

    def rate(self) -> float | None:
        if not self.window:
            return None
        steps, losses = zip(*self.window)
        return log_loss_slope(list(steps), list(losses))

    def state(self) -> dict:
        return {"window": list(self.window), "steps_to_fit": self.steps_to_fit}

    def load(self, state: dict) -> None:
        self.window.clear()
        self.window.extend((int(s), float(v)) for s, v in state["window"])
        self.steps_to_fit = state["steps_to_fit"]
