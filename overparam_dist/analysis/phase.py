"""The seed paper's claim as a phase transition: the probability of fitting within the budget, as a function of log m,
per cell (n, L), from a critical-width search run once per seed (launcher/sweep/plans.py, critical_width.csv).

Each seed's search brackets its own threshold: it fitted at `hi` and not at `lo`, the next smaller width of the grid
(lo = 0: it fitted at the smallest; hi = inf: at none). Taking that threshold as logistic in log m,
P(fit at m) = sigmoid((log m - mu) / s), the seeds' brackets are interval-censored observations of it, and

    log-likelihood(mu, s) = sum_seeds log( F(log hi) - F(log lo) ),    F = the logistic CDF.

m*_50 = exp(mu) is the width at which half the seeds fit. It is the maximum of the likelihood on a grid (mu, s), so it
is deterministic and has no optimiser to fail; its 95% interval is a percentile bootstrap over the seeds of the cell.
The power law m*_50 ∝ n^a L^b is fitted by least squares over the cells, its intervals from the same bootstrap
(each replicate resamples the seeds of every cell and refits everything).

Two reference curves bracket it. Parameter counting: a net with P trained parameters fits n·C generic targets only
if P ≳ n·C, and the paper's net trains L m × m layers, so m ≥ sqrt(n C / L) (a = ½, b = −½). The theorem: a
sufficient width m ≥ n^24 L^12, an upper bound, far above every width that can be run.

The budget: each probe records the step it fitted at (`probed_steps`), so m*_50 under half the budget comes from the
same trials; a budget that does not bind moves m*_50 by less than its interval when it is doubled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

BOOTSTRAP = 400  # replicates
S_MIN = math.log(2) / 16  # the logistic's scale s (in log m) is at least a quarter of a 2^(1/4) grid step
THEOREM = (24.0, 12.0)  # the theorem's sufficient width n^24 L^12: exponents of n and L
COUNTING = (0.5, -0.5)  # L m^2 >= n C


@dataclass
class Bracket:
    lo: float  # the largest width that did not fit (0: none below hi)
    hi: float  # the smallest width that fitted (inf: none)


@dataclass
class Cell:
    n: float
    depth: float
    brackets: list[Bracket]
    m50: float | None = None  # None: the median seed fitted at no probed width, or at the smallest (censored)
    ci95: tuple[float, float] | None = None
    scale: float | None = None  # s of the logistic, in log m
    # m*_50 at half the budget, and the bootstrap interval of log(m*_50 at half / m*_50 at all of it) on the same draws
    half_budget: dict = field(default_factory=dict)

    @property
    def seeds(self) -> int:
        return len(self.brackets)


def bracket(row: dict, budget: float | None = None) -> Bracket | None:
    """One seed's bracket from its critical_width.csv row; with `budget`, a probe fitted only if it did so within
    that many steps (from `probed_steps`)."""
    try:
        probed = {float(w): bool(ok) for w, ok in _mapping(row.get("probed_widths")).items()}
        steps = _mapping(row.get("probed_steps"))
    except (TypeError, ValueError, AttributeError):
        return None
    if budget is not None:
        if not steps:
            return None
        # a fit within the budget is a fit at all (a flagged or unfinished probe is none) that came soon enough
        probed = {w: ok and (s := steps.get(_key(w), steps.get(str(w)))) is not None and float(s) <= budget
                  for w, ok in probed.items()}
    if not probed:
        return None
    hi = min((w for w, ok in probed.items() if ok), default=math.inf)
    lo = max((w for w, ok in probed.items() if not ok and w < hi), default=0.0)
    return Bracket(lo, hi)


def _key(w: float) -> str:
    return str(int(w)) if w == int(w) else str(w)


def _mapping(v) -> dict:
    """A probed_* column: JSON text as written, or the mapping results.py reads it into."""
    return json.loads(v) if isinstance(v, str) else dict(v or {})


def _loglik(brackets: list[Bracket], mus: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """The interval-censored log-likelihood on the grid mus x ss."""
    mu, s = mus[:, None, None], ss[None, :, None]
    lo = np.array([math.log(b.lo) if b.lo > 0 else -np.inf for b in brackets])[None, None, :]
    hi = np.array([math.log(b.hi) if b.hi < math.inf else np.inf for b in brackets])[None, None, :]
    with np.errstate(over="ignore"):
        prob = 1 / (1 + np.exp(-(hi - mu) / s)) - 1 / (1 + np.exp(-(lo - mu) / s))
    return np.log(np.clip(prob, 1e-300, None)).sum(-1)


def _argmax(ll: np.ndarray) -> tuple[int, int]:
    """The maximum; ties (a flat likelihood when every seed shares one bracket) go to the middle of the maximising
    mu's, at the largest s among them."""
    best = np.argwhere(ll >= ll.max() - 1e-9)
    i = int(round(np.median(best[:, 0])))
    rows = best[best[:, 0] == best[np.abs(best[:, 0] - i).argmin(), 0]]
    return int(rows[0, 0]), int(rows[:, 1].max())


def censored(brackets: list[Bracket]) -> str | None:
    """'above' when at least half the seeds fitted at no probed width, 'below' when at least half fitted at the
    smallest: the median is outside the grid, and any m*_50 there would be the grid's, not the data's."""
    k = len(brackets)
    if not k or sum(b.hi == math.inf for b in brackets) * 2 >= k:
        return "above"
    if sum(b.lo == 0 for b in brackets) * 2 >= k:
        return "below"
    return None


def median_bracket(brackets: list[Bracket]) -> tuple[float, float]:
    """Where the median threshold lies whatever its distribution: at or above the j-th smallest lo and at or below
    the j-th smallest hi, j = ceil(k / 2) (the nonparametric bound of interval-censored data)."""
    j = math.ceil(len(brackets) / 2) - 1
    return sorted(b.lo for b in brackets)[j], sorted(b.hi for b in brackets)[j]


def fit_logistic(brackets: list[Bracket]) -> tuple[float, float] | None:
    """(mu, s) maximising the interval-censored likelihood, on a coarse grid and then a fine one around its maximum;
    None where the median is censored (censored()). The logistic is a model: where it puts exp(mu) outside the
    median's nonparametric bracket (seeds split between a small width and none at all), mu is moved to that
    bracket's geometric middle."""
    if censored(brackets):
        return None
    ends = [math.log(v) for b in brackets for v in (b.lo, b.hi) if 0 < v < math.inf]
    lo, hi = min(ends), max(ends)
    mus, ss = np.linspace(lo - 1.0, hi + 1.0, 61), np.geomspace(S_MIN, 2.0, 20)
    i, j = _argmax(_loglik(brackets, mus, ss))
    step = mus[1] - mus[0]
    fine_mu = np.linspace(mus[i] - 2 * step, mus[i] + 2 * step, 41)
    fine_s = np.geomspace(max(S_MIN, ss[j] / 1.6), ss[j] * 1.6, 11)
    i, j = _argmax(_loglik(brackets, fine_mu, fine_s))
    mu, s = float(fine_mu[i]), float(fine_s[j])
    m_lo, m_hi = median_bracket(brackets)
    if not (math.log(max(m_lo, 1e-300)) <= mu <= math.log(m_hi)):
        mu = (math.log(m_lo) + math.log(m_hi)) / 2 if m_lo > 0 and m_hi < math.inf else \
            min(max(mu, math.log(max(m_lo, 1e-300))), math.log(m_hi))
    return mu, s


def _m50(brackets: list[Bracket]) -> float | None:
    fit = fit_logistic(brackets)
    return None if fit is None else math.exp(fit[0])


def _boot(brackets: list[Bracket], draws: np.ndarray) -> list[float | None]:
    return [_m50([brackets[k] for k in d]) for d in draws]


def _interval(values: list[float | None]) -> tuple[float, float] | None:
    """The 95% percentile interval; None when more than a tenth of the replicates have no value (a censored median):
    dropping them would keep only the replicates where m* is smallest, so no finite interval is claimed."""
    vals = [v for v in values if v is not None]
    if len(vals) < 0.9 * len(values) or not vals:
        return None
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def cells(rows: list[dict], boot: int = BOOTSTRAP, seed: int = 0) -> tuple[list[Cell], dict[tuple, np.ndarray]]:
    """Every (data.n, model.depth) cell with m*_50, its bootstrap interval, and the same at half the budget; and the
    bootstrap replicates of log m*_50 per cell (for the law's intervals)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        n, depth = positive(r.get("data.n")), positive(r.get("model.depth"))
        if n and depth:
            groups.setdefault((n, depth), []).append(r)
    out, reps = [], {}
    for (n, depth), rs in sorted(groups.items()):
        brackets = [b for r in rs if (b := bracket(r)) is not None]
        cell = Cell(n, depth, brackets)
        fit = fit_logistic(brackets)
        draws = rng.integers(0, len(brackets), size=(boot, len(brackets))) if brackets else np.zeros((0, 0), int)
        if fit is not None:
            cell.m50, cell.scale = math.exp(fit[0]), fit[1]
            boots = _boot(brackets, draws)
            cell.ci95 = _interval(boots)
            reps[(n, depth)] = np.array([math.log(v) if v else np.nan for v in boots])
        budget = positive(rs[0].get("budget"))
        half = [b for r in rs if budget and (b := bracket(r, budget / 2)) is not None]
        if len(half) == len(brackets) and half and cell.m50 is not None:
            moves = [math.log(h / f) if h and f else None for h, f in zip(_boot(half, draws), boots)]
            # median_lo: where the median at half the budget lies at least (median_bracket), also when most seeds
            # fit at no probed width there
            cell.half_budget = {"budget": budget / 2, "m50": _m50(half), "log_move_ci95": _interval(moves),
                                "median_lo": median_bracket(half)[0]}
        out.append(cell)
    return out, reps


def fit_law(found: list[Cell], reps: dict[tuple, np.ndarray], widest: float | None = None) -> dict:
    """log m*_50 = c + a log n + b log L over the cells with an m*_50, with percentile intervals from the bootstrap
    replicates; `top`: the same law over the two largest n alone, the local exponent where m* is largest, and
    `a_top_cap`: the largest local exponent the grid (up to `widest`) could have shown there."""
    out = _law([c for c in found if c.m50 is not None], reps)
    ns = sorted({c.n for c in found if c.m50 is not None})
    if len(ns) >= 3:
        out["top"] = _law([c for c in found if c.m50 is not None and c.n in ns[-2:]], reps)
        lower = [c.m50 for c in found if c.n == ns[-2] and c.m50]
        if widest and lower:
            out["a_top_cap"] = math.log(widest / min(lower)) / math.log(ns[-1] / ns[-2])
    return out


def _law(pts: list[Cell], reps: dict[tuple, np.ndarray]) -> dict:
    out: dict = {"cells": len(pts)}
    ns, ds = {c.n for c in pts}, {c.depth for c in pts}
    cols = [("a", lambda c: math.log(c.n), len(ns) > 1), ("b", lambda c: math.log(c.depth), len(ds) > 1)]
    cols = [(k, f) for k, f, ok in cols if ok]
    if not cols or len(pts) <= len(cols) + 1:
        out["note"] = "too few cells with an m*_50 for the law"
        return out
    X = np.array([[1.0] + [f(c) for _, f in cols] for c in pts])
    y = np.array([math.log(c.m50) for c in pts])
    beta = np.linalg.lstsq(X, y, rcond=None)[0]
    out["log_c"] = float(beta[0])
    out.update({k: float(beta[i + 1]) for i, (k, _) in enumerate(cols)})
    R = np.stack([reps[(c.n, c.depth)] for c in pts], axis=1) if all((c.n, c.depth) in reps for c in pts) else None
    ok = ~np.isnan(R).any(axis=1) if R is not None else None
    if R is not None and ok.mean() >= 0.9:  # as _interval: a law over the easy replicates alone is not claimed
        B = np.linalg.lstsq(X, R[ok].T, rcond=None)[0]
        for i, (k, _) in enumerate(cols):
            out[f"{k}_ci95"] = [float(np.percentile(B[i + 1], 2.5)), float(np.percentile(B[i + 1], 97.5))]
    return out


def counting_width(n: float, depth: float, classes: float) -> float:
    """The smallest width whose L m x m trained layers hold n C parameters."""
    return math.sqrt(n * classes / depth)


def probed_widths(row: dict) -> list[float]:
    """The widths a seed's search probed."""
    try:
        return [float(w) for w in _mapping(row.get("probed_widths"))]
    except (TypeError, ValueError, AttributeError):
        return []


def positive(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None
