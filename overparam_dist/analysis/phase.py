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

from .plots import SERIES_COLORS, Panel, Series
from .verdicts import CONTRADICTED, INCONCLUSIVE, SLOPE_TOL, SUPPORTED, Finding, Verdict, every_trial

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
    m50: float | None = None  # None: more than half of the seeds fitted at no probed width
    ci95: tuple[float, float] | None = None
    scale: float | None = None  # s of the logistic, in log m
    half_budget: dict = field(default_factory=dict)  # the same at half the budget: m50, ci95

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
        probed = {float(w): s is not None and float(s) <= budget for w, s in steps.items()}
    if not probed:
        return None
    hi = min((w for w, ok in probed.items() if ok), default=math.inf)
    lo = max((w for w, ok in probed.items() if not ok and w < hi), default=0.0)
    return Bracket(lo, hi)


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
    i = int(best[len(best) // 2, 0]) if len(set(best[:, 0])) == 1 else int(round(np.median(best[:, 0])))
    rows = best[best[:, 0] == best[np.abs(best[:, 0] - i).argmin(), 0]]
    return int(rows[0, 0]), int(rows[:, 1].max())


def fit_logistic(brackets: list[Bracket]) -> tuple[float, float] | None:
    """(mu, s) maximising the interval-censored likelihood, on a coarse grid and then a fine one around its maximum;
    None when more than half the seeds fitted at no probed width (the median lies above the grid: an m*_50 there
    would be extrapolated)."""
    if not brackets or sum(b.hi == math.inf for b in brackets) * 2 > len(brackets):
        return None
    ends = [math.log(v) for b in brackets for v in (b.lo, b.hi) if 0 < v < math.inf]
    lo, hi = (min(ends), max(ends)) if ends else (0.0, 1.0)
    mus, ss = np.linspace(lo - 1.0, hi + 1.0, 61), np.geomspace(S_MIN, 2.0, 20)
    i, j = _argmax(_loglik(brackets, mus, ss))
    step = mus[1] - mus[0]
    fine_mu = np.linspace(mus[i] - 2 * step, mus[i] + 2 * step, 41)
    fine_s = np.geomspace(max(S_MIN, ss[j] / 1.6), ss[j] * 1.6, 11)
    i, j = _argmax(_loglik(brackets, fine_mu, fine_s))
    return float(fine_mu[i]), float(fine_s[j])


def _m50(brackets: list[Bracket]) -> float | None:
    fit = fit_logistic(brackets)
    return None if fit is None else math.exp(fit[0])


def _boot(brackets: list[Bracket], draws: np.ndarray) -> list[float | None]:
    return [_m50([brackets[k] for k in d]) for d in draws]


def _interval(values: list[float | None]) -> tuple[float, float] | None:
    vals = [v for v in values if v is not None]
    if len(vals) < 0.9 * len(values) or not vals:
        return None  # more than a tenth of the replicates have no m*_50: no finite interval
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def cells(rows: list[dict], boot: int = BOOTSTRAP, seed: int = 0) -> tuple[list[Cell], dict[tuple, np.ndarray]]:
    """Every (data.n, model.depth) cell with m*_50, its bootstrap interval, and the same at half the budget; and the
    bootstrap replicates of log m*_50 per cell (for the law's intervals)."""
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        n, depth = _num(r.get("data.n")), _num(r.get("model.depth"))
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
        budget = _num(rs[0].get("budget"))
        half = [b for r in rs if budget and (b := bracket(r, budget / 2)) is not None]
        if len(half) == len(brackets) and half:
            cell.half_budget = {"budget": budget / 2, "m50": _m50(half), "ci95": _interval(_boot(half, draws))}
        out.append(cell)
    return out, reps


def fit_law(found: list[Cell], reps: dict[tuple, np.ndarray]) -> dict:
    """log m*_50 = c + a log n + b log L over the cells with an m*_50, with percentile intervals from the bootstrap
    replicates; `top`: the same law over the two largest n alone, the local exponent where m* is largest."""
    out = _law([c for c in found if c.m50 is not None], reps)
    ns = sorted({c.n for c in found if c.m50 is not None})
    if len(ns) >= 3:
        out["top"] = _law([c for c in found if c.m50 is not None and c.n in ns[-2:]], reps)
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
    if R is not None:
        ok = ~np.isnan(R).any(axis=1)
        B = np.linalg.lstsq(X, R[ok].T, rcond=None)[0]
        for i, (k, _) in enumerate(cols):
            out[f"{k}_ci95"] = [float(np.percentile(B[i + 1], 2.5)), float(np.percentile(B[i + 1], 97.5))]
    return out


def counting_width(n: float, depth: float, classes: float) -> float:
    """The smallest width whose L m x m trained layers hold n C parameters."""
    return math.sqrt(n * classes / depth)


def _num(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


# ------------------------------------------------------------------------------------------------ the claim


def _ci_text(ci) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else " (no interval)"


def _law_verdicts(law: dict, seeds: int) -> list[Finding]:
    """m*_50 polynomial in n and L, tested where it can fail: the exponents' intervals, and the local exponent of n
    over the two largest n (where a super-polynomial m* would be steepest), must lie within the theorem's (a <= 24,
    b <= 12). At these sizes that catches growth faster than n^24 at n = 256, not a slow exponential: the claim card
    says so."""
    out = []
    a, b = law.get("a"), law.get("b")
    ci_a, ci_b = law.get("a_ci95"), law.get("b_ci95")
    top = law.get("top") or {}
    ci_top = top.get("a_ci95")
    bounds = [("a", ci_a, THEOREM[0]), ("b", ci_b, THEOREM[1]), ("a over the two largest n", ci_top, THEOREM[0])]
    if a is None or ci_a is None:
        verdict = Verdict(INCONCLUSIVE, law.get("note", "no interval for the exponent of n"), a, None, seeds)
    elif above := [f"{k}{_ci_text(ci)} > {bound:g}" for k, ci, bound in bounds if ci and ci[0] > bound]:
        verdict = Verdict(CONTRADICTED, "beyond the theorem's exponent: " + "; ".join(above), a, tuple(ci_a), seeds)
    elif all(ci is None or ci[1] <= bound for _, ci, bound in bounds):
        verdict = Verdict(SUPPORTED, "bounded, within the theorem's exponents: " + "; ".join(
            f"{k}{_ci_text(ci)}" for k, ci, _ in bounds if ci), a, tuple(ci_a), seeds)
    else:
        verdict = Verdict(INCONCLUSIVE, "an interval reaches past the theorem's exponent: " + "; ".join(
            f"{k}{_ci_text(ci)}" for k, ci, _ in bounds if ci), a, tuple(ci_a), seeds)
    measured = "not fitted" if a is None else f"a = {a:.2f}{_ci_text(ci_a)}" + (
        f", b = {b:.2f}{_ci_text(ci_b)}" if b is not None else "")
    if top.get("a") is not None:
        measured += f"; over the two largest n, a = {top['a']:.2f}{_ci_text(ci_top)}"
    out.append(Finding("m*_50 ∝ n^a L^b: polynomial (bounded exponents, within the theorem's)",
                       f"polynomial; the theorem's sufficient width n^{THEOREM[0]:g} L^{THEOREM[1]:g}", measured,
                       verdict, {"law": law}))
    # The measured exponents against plain parameter counting (a = 1/2, b = -1/2): a law that can fail either way.
    for sym, ref in (("a", COUNTING[0]), ("b", COUNTING[1])):
        v, ci = law.get(sym), law.get(f"{sym}_ci95")
        if v is None:
            continue
        if ci is None:
            word, why = INCONCLUSIVE, "no interval"
        elif ci[0] - SLOPE_TOL <= ref <= ci[1] + SLOPE_TOL:
            word, why = SUPPORTED, f"the interval{_ci_text(ci)} meets {ref:g} ± {SLOPE_TOL:g}"
        else:
            word, why = CONTRADICTED, f"the interval{_ci_text(ci)} misses {ref:g} ± {SLOPE_TOL:g}"
        out.append(Finding(f"exponent {sym} against parameter counting (L·m² = n·C)", f"{ref:g}",
                           f"{v:.2f}{_ci_text(ci)}", Verdict(word, why, v, tuple(ci) if ci else None, seeds),
                           {sym: v, "ci95": ci}))
    return out


def _between(found: list[Cell], classes: float, seeds: int) -> Finding:
    """Every cell's m*_50 at or above the counting width (its interval not below it) and below the theorem's."""
    rows, below, unsure = [], [], []
    for c in found:
        if c.m50 is None or c.ci95 is None:
            unsure.append(c)
            continue
        count = counting_width(c.n, c.depth, classes)
        rows.append(f"n={c.n:g}, L={c.depth:g}: {c.m50:.3g}{_ci_text(c.ci95)} vs {count:.3g}")
        if c.ci95[1] < count:
            below.append(c)
        elif c.ci95[0] < count:
            unsure.append(c)
    if below:
        verdict = Verdict(CONTRADICTED, f"{len(below)} cell(s) fit below the counting width", seeds=seeds)
    elif unsure or not rows:
        verdict = Verdict(INCONCLUSIVE, f"{len(unsure)} cell(s) with no m*_50, or an interval reaching below the "
                          "counting width", seeds=seeds)
    else:
        verdict = Verdict(SUPPORTED, f"all {len(rows)} cells: the interval lies at or above sqrt(nC/L) (and, far "
                          f"below the theorem's n^{THEOREM[0]:g} L^{THEOREM[1]:g})", seeds=seeds)
    ratios = [c.m50 / counting_width(c.n, c.depth, classes) for c in found if c.m50]
    return Finding("m*_50 between the counting width sqrt(nC/L) and the theorem's n^24 L^12",
                   "at least the counting width (a lower bound), at most the theorem's (an upper bound)",
                   f"m*_50 / counting width {min(ratios):.2g}–{max(ratios):.2g}" if ratios else "no m*_50",
                   verdict, {"cells": rows})


def _budget(found: list[Cell], seeds: int) -> Finding:
    """Doubling the budget (half of it -> all of it) moves m*_50 by less than its interval, in every cell."""
    moved, bad, rows = [], [], []
    for c in found:
        half = c.half_budget.get("m50")
        if c.m50 is None or c.ci95 is None:
            continue
        if half is None:
            bad.append(c)
            rows.append(f"n={c.n:g}, L={c.depth:g}: none at half the budget, {c.m50:.3g} at all of it")
            continue
        moved.append(abs(math.log(c.m50 / half)))
        inside = c.ci95[0] <= half <= c.ci95[1]
        rows.append(f"n={c.n:g}, L={c.depth:g}: {half:.3g} → {c.m50:.3g}{_ci_text(c.ci95)}")
        if not inside:
            bad.append(c)
    if not rows:
        verdict = Verdict(INCONCLUSIVE, "no cell with an m*_50 and its budget record", seeds=seeds)
    elif bad:
        verdict = Verdict(CONTRADICTED, f"in {len(bad)} of {len(rows)} cells m*_50 at half the budget lies outside "
                          "the full budget's interval: the budget binds there", seeds=seeds)
    else:
        verdict = Verdict(SUPPORTED, f"in all {len(rows)} cells m*_50 at half the budget lies inside the full "
                          "budget's interval", seeds=seeds)
    return Finding("doubling the step budget moves m*_50 by less than its interval", "(a budget that does not bind)",
                   f"largest move ×{math.exp(max(moved)):.2f}" if moved else "no data", verdict, {"cells": rows})


def critical_findings(res) -> tuple[list[Finding], list[Panel]]:
    """The claim's findings and panels for a critical-width sweep run per seed (repro.py's allenzhu check)."""
    found, reps = cells(res.critical_width or [])
    seeds = min((c.seeds for c in found), default=0)
    classes = next((v for t in res.trials if (v := _num(t.row.get("data.classes")))), 2.0)
    with_m50 = [c for c in found if c.m50 is not None]
    first = Finding("cells (n, L) where P(fit) crosses ½ within the probed widths", "every (n, L)",
                    f"{len(with_m50)} of {len(found)}", every_trial(len(with_m50), len(found), seeds,
                                                                    "have an m*_50 among the probed widths", "cells"),
                    {"cells": {f"n={c.n:g}, L={c.depth:g}": c.m50 for c in found}})
    law = fit_law(found, reps)
    return [first, *_law_verdicts(law, seeds), _between(found, classes, seeds), _budget(found, seeds)], \
        _panels(found, law, classes)


def _panels(found: list[Cell], law: dict, classes: float) -> list[Panel]:
    ns = sorted({c.n for c in found})
    depths = sorted({c.depth for c in found})
    styles = ["-", "--", "-.", ":"]
    curves = Panel(title="P(fit within the budget) against width: logistic in log m per cell (points: seeds that "
                   "fitted / seeds bracketed there)", xlabel="width m", ylabel="P(fit)", xlog=True)
    for c in found:
        if c.m50 is None or c.scale is None:
            continue
        color = SERIES_COLORS(ns.index(c.n) % 10)
        xs = np.geomspace(c.m50 / 8, c.m50 * 8, 60)
        curves.series.append(Series(f"n={c.n:g}, L={c.depth:g}", list(xs),
                                    list(1 / (1 + np.exp(-(np.log(xs) - math.log(c.m50)) / c.scale))),
                                    meta={"line": True, "color": color,
                                          "style": styles[depths.index(c.depth) % len(styles)]}))
        pts = _empirical(c)
        curves.series.append(Series("_", list(pts), list(pts.values()), meta={"line": True, "color": color,
                                                                                "style": "o"}))
    law_panel = Panel(title="m*_50 with its bootstrap 95% interval; dotted: the fitted law; dashed: the counting "
                      "width sqrt(nC/L) (the theorem's n^24 L^12 lies above 10^28, off the axes)",
                      xlabel="samples n", ylabel="width m*_50", xlog=True, ylog=True)
    lines = []  # after the data: draw.py colours the i-th data series SERIES_COLORS(i), and these match it
    for i, depth in enumerate(depths):
        cs = [c for c in found if c.depth == depth and c.m50 is not None]
        color = SERIES_COLORS(i % 10)
        law_panel.series.append(Series(f"L={depth:g}", [c.n for c in cs], [c.m50 for c in cs],
                                       lo=[c.ci95[0] if c.ci95 else None for c in cs],
                                       hi=[c.ci95[1] if c.ci95 else None for c in cs]))
        lines.append(Series("_", ns, [counting_width(n, depth, classes) for n in ns],
                            meta={"line": True, "color": color, "style": "--"}))
        if law.get("a") is not None and "log_c" in law:
            fit = [math.exp(law["log_c"] + law["a"] * math.log(n) + law.get("b", 0.0) * math.log(depth)) for n in ns]
            lines.append(Series("_", ns, fit, meta={"line": True, "color": color, "style": ":"}))
    law_panel.series += lines
    return [curves, law_panel]


def _empirical(c: Cell) -> dict[float, float]:
    """At each bracket end, the fraction of seeds known to fit there among the seeds whose bracket decides it."""
    out = {}
    for w in sorted({v for b in c.brackets for v in (b.lo, b.hi) if 0 < v < math.inf}):
        known = [b.hi <= w for b in c.brackets if b.hi <= w or b.lo >= w]
        if known:
            out[w] = sum(known) / len(known)
    return out
