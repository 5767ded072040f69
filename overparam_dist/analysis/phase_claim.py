"""The seed paper's claim measured as a phase transition (phase.py's estimates): the findings, each with a verdict
that can fail where finite sizes allow, and the two panels of the claim's figure (P(fit) against width per cell;
m*_50 against n with the fitted law and the counting width)."""

from __future__ import annotations

import math

import numpy as np

from .phase import COUNTING, THEOREM, Cell, cells, censored, counting_width, fit_law, positive, probed_widths
from .plots import SERIES_COLORS, Panel, Series
from .verdicts import CONTRADICTED, INCONCLUSIVE, SLOPE_TOL, SUPPORTED, Finding, Verdict, every_trial


def _ci_text(ci) -> str:
    return f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else " (no interval)"


def _law_verdicts(law: dict, seeds: int, found: list[Cell] | None = None) -> list[Finding]:
    """m*_50 polynomial in n and L, as far as finite sizes can tell: finite in every cell, and the law's exponents,
    the local one over the two largest n included, measured with bounded intervals that the width grid did not cut
    off (an m* growing faster would leave the grid: a cell censored above, or a local exponent reaching the largest
    the grid can show). That can fail only as `inconclusive`: no finite n tells a polynomial from a slow exponential,
    and no exponent measured here can cross the theorem's 24, an upper bound. The claim card says so."""
    out = []
    a, b = law.get("a"), law.get("b")
    ci_a, ci_b = law.get("a_ci95"), law.get("b_ci95")
    top = law.get("top") or {}
    ci_top, cap = top.get("a_ci95"), law.get("a_top_cap")
    above = [f"n={c.n:g}, L={c.depth:g}" for c in found or [] if censored(c.brackets) == "above"]
    if above:
        verdict = Verdict(INCONCLUSIVE, f"m* lies beyond the widest probed width in {len(above)} cell(s) "
                          f"({'; '.join(above)}): no law over the cells", a, None, seeds)
    elif a is None or ci_a is None or (b is not None and ci_b is None):
        verdict = Verdict(INCONCLUSIVE, law.get("note", "no bootstrap interval for the law"), a, None, seeds)
    elif ci_top is not None and cap is not None and ci_top[1] >= cap:
        verdict = Verdict(INCONCLUSIVE, f"the local exponent over the two largest n{_ci_text(ci_top)} reaches "
                          f"{cap:.2f}, the largest the width grid can show there", a, tuple(ci_a), seeds)
    else:
        verdict = Verdict(SUPPORTED, "finite in every cell, with bounded exponents the grid did not cut off: "
                          f"a{_ci_text(ci_a)}" + (f", b{_ci_text(ci_b)}" if ci_b else "") +
                          (f", locally a{_ci_text(ci_top)} under the grid's {cap:.2f}" if ci_top and cap else ""),
                          a, tuple(ci_a), seeds)
    measured = "not fitted" if a is None else f"a = {a:.2f}{_ci_text(ci_a)}" + (
        f", b = {b:.2f}{_ci_text(ci_b)}" if b is not None else "")
    if top.get("a") is not None:
        measured += f"; over the two largest n, a = {top['a']:.2f}{_ci_text(ci_top)}"
    out.append(Finding("m*_50 ∝ n^a L^b: polynomial (finite, bounded exponents)",
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
    """Doubling the budget (half of it -> all of it) does not move m*_50: in every cell the bootstrap interval of
    log(m*_50 at half / m*_50 at all), on the same resampled seeds, contains 0. Contradicted where one lies above 0
    (the longer budget fits narrower nets: it binds); cells without the record or with a censored median decide
    nothing."""
    rows, binds, unknown = [], [], []
    for c in found:
        half, ci = c.half_budget.get("m50"), c.half_budget.get("log_move_ci95")
        where = f"n={c.n:g}, L={c.depth:g}"
        floor = c.half_budget.get("median_lo")
        if c.m50 is not None and c.ci95 is not None and floor is not None and floor > c.ci95[1]:
            rows.append(f"{where}: above {floor:.3g} at half the budget, {c.m50:.3g}{_ci_text(c.ci95)} at all of it")
            binds.append(where)
            continue
        if c.m50 is None or half is None or ci is None:
            unknown.append(where)
            continue
        rows.append(f"{where}: {half:.3g} → {c.m50:.3g} (×{c.m50 / half:.2f}; log-ratio interval "
                    f"[{ci[0]:.2f}, {ci[1]:.2f}])")
        if ci[0] > 0:
            binds.append(where)
    if binds:
        verdict = Verdict(CONTRADICTED, f"the budget binds in {len(binds)} of {len(rows)} cells ({'; '.join(binds)}): "
                          "m*_50 at half of it is larger beyond the bootstrap interval", seeds=seeds)
    elif unknown or not rows:
        verdict = Verdict(INCONCLUSIVE, f"{len(unknown)} cell(s) without both m*_50: {'; '.join(unknown)}",
                          seeds=seeds)
    else:
        verdict = Verdict(SUPPORTED, f"in all {len(rows)} cells the interval of the move contains 0", seeds=seeds)
    moves = [c.half_budget["m50"] / c.m50 for c in found if c.m50 and c.half_budget.get("m50")]
    return Finding("doubling the step budget does not move m*_50", "(a budget that does not bind)",
                   f"m*_50 at half the budget / at all of it: ×{min(moves):.2f}–×{max(moves):.2f}" if moves
                   else "no data",
                   verdict, {"cells": rows})


def critical_findings(res) -> tuple[list[Finding], list[Panel]]:
    """The claim's findings and panels for a critical-width sweep run per seed (repro.py's allenzhu check)."""
    found, reps = cells(res.critical_width or [])
    seeds = min((c.seeds for c in found), default=0)
    classes = next((v for t in res.trials if (v := positive(t.row.get("data.classes")))), 2.0)
    with_m50 = [c for c in found if c.m50 is not None]
    first = Finding("cells (n, L) where P(fit) crosses ½ within the probed widths", "every (n, L)",
                    f"{len(with_m50)} of {len(found)}", every_trial(len(with_m50), len(found), seeds,
                                                                    "have an m*_50 among the probed widths", "cells"),
                    {"cells": {f"n={c.n:g}, L={c.depth:g}": c.m50 for c in found}})
    law = fit_law(found, reps, max((w for r in res.critical_width or [] for w in probed_widths(r)), default=None))
    return [first, *_law_verdicts(law, seeds, found), _between(found, classes, seeds), _budget(found, seeds)], \
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
