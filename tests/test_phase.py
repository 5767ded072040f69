"""The critical width as a phase transition (analysis/phase.py): m*_50 from seeds' brackets by an interval-censored
logistic fit, its bootstrap interval, the power law over cells and the verdicts, on brackets drawn from known laws:
ones built to pass and ones built to fail."""

import json
import math

import numpy as np
import pytest

from overparam_dist.analysis.phase import (
    Bracket,
    _between,
    _budget,
    _law_verdicts,
    bracket,
    cells,
    counting_width,
    fit_law,
    fit_logistic,
)

GRID = [round(4 * 2 ** (k / 4)) for k in range(33)]  # 4 .. 1024, ratio 2^(1/4)
HUGE = [4 * 2 ** (k / 4) for k in range(280)]  # to 10^21: room for an exponential
BUDGET = 1000


def _search(threshold: float, steps_at=lambda w: 300, grid=GRID) -> dict:
    """A seed's bisection over the grid, fitting at every width >= threshold (as launcher/sweep/plans.py records
    it)."""
    lo, hi, probed, steps = 0, len(grid), {}, {}
    while lo < hi:
        mid = (lo + hi) // 2
        ok = bool(grid[mid] >= threshold)
        probed[str(grid[mid])] = ok
        steps[str(grid[mid])] = steps_at(grid[mid]) if ok else None
        lo, hi = (lo, mid) if ok else (mid + 1, hi)
    return {"probed_widths": json.dumps(probed), "probed_steps": json.dumps(steps), "budget": BUDGET}


def _rows(law, ns, depths, seeds, rng, scale=0.25, grid=GRID, **kw) -> list[dict]:
    rows = []
    for n in ns:
        for depth in depths:
            for seed in range(seeds):
                t = math.exp(math.log(law(n, depth)) + scale * rng.logistic())
                rows.append({"data.n": n, "model.depth": depth, "seed": seed, **_search(t, grid=grid, **kw)})
    return rows


def test_brackets_and_the_logistic_recover_a_known_median():
    rng = np.random.default_rng(0)
    thresholds = np.exp(math.log(64) + 0.3 * rng.logistic(size=400))
    brackets = [bracket(_search(t)) for t in thresholds]
    for t, b in zip(thresholds, brackets):
        assert b.lo < t <= b.hi and (b.lo == 0 or b.hi / b.lo <= 1.25)  # adjacent grid widths (rounded) bracket it
    mu, s = fit_logistic(brackets)
    # the MLE (checked against scipy's Nelder-Mead: 67.69 against the grid's 67.65 here) sits at the sample's own
    # median (68.4), within its sampling error of the law's 64
    assert math.exp(mu) == pytest.approx(float(np.median(thresholds)), rel=0.03)
    assert math.exp(mu) == pytest.approx(64, rel=0.08)
    assert s == pytest.approx(0.3, rel=0.2)
    # Right-censored seeds: more than half fitting at no width gives no m*_50 (it would be extrapolated).
    assert fit_logistic([Bracket(512, math.inf)] * 3 + [Bracket(8, 11)] * 2) is None
    # Half the budget: a probe that fitted after budget / 2 steps did not fit within it.
    late = bracket(_search(40, steps_at=lambda w: 800 if w < 60 else 100), BUDGET / 2)
    assert late.lo < 60 <= late.hi


def test_a_counting_law_is_recovered_with_intervals_that_cover_it():
    """m* = 3 sqrt(n C / L): a = 1/2, b = -1/2; 5 seeds per cell; the bootstrap intervals contain both, and the
    verdicts say polynomial, counting supported, between the bounds supported, budget not binding."""
    rng = np.random.default_rng(1)
    rows = _rows(lambda n, d: 3 * counting_width(n, d, 2), [16, 64, 256], [1, 2, 4, 8], 5, rng)
    found, reps = cells(rows, boot=200)
    law = fit_law(found, reps)
    assert law["a_ci95"][0] <= 0.5 <= law["a_ci95"][1] and law["b_ci95"][0] <= -0.5 <= law["b_ci95"][1]
    assert abs(law["a"] - 0.5) < 0.15 and abs(law["b"] + 0.5) < 0.15
    for c in found:  # each cell's interval contains its true median most of the time; all of them here
        truth = 3 * counting_width(c.n, c.depth, 2)
        assert c.ci95[0] <= truth * 1.2 and truth / 1.2 <= c.ci95[1]
    words = [f.verdict.word for f in _law_verdicts(law, 5)]
    assert words == ["supported", "supported", "supported"]
    assert law["top"]["a_ci95"][0] <= 0.5 <= law["top"]["a_ci95"][1]  # the local exponent at the largest n
    assert _between(found, 2, 5).verdict.word == "supported"
    assert _budget(found, 5).verdict.word == "supported"


def test_built_to_fail_exponential_growth_and_a_binding_budget_and_too_narrow_nets():
    rng = np.random.default_rng(2)
    # m* = exp(n / 2): its local exponent over n = 64..96 is 16 / log 1.5 = 39 > 24, beyond the theorem's polynomial
    rows = _rows(lambda n, d: math.exp(n / 2), [16, 32, 64, 96], [1, 2], 5, rng, scale=0.1,
                 grid=HUGE)
    found, reps = cells(rows, boot=200)
    poly = _law_verdicts(fit_law(found, reps), 5)[0]
    assert poly.verdict.word == "contradicted" and "a over the two largest n" in poly.verdict.reason, poly.verdict
    # A polynomial with an offset (m* = 4 + n, convex in log-log at small n) is not taken for super-polynomial
    rows = _rows(lambda n, d: 4 + n, [8, 16, 32, 64, 128, 256], [1, 2], 5, rng, scale=0.1)
    found, reps = cells(rows, boot=200)
    assert _law_verdicts(fit_law(found, reps), 5)[0].verdict.word == "supported"
    # m* below the counting width: contradicted, and the counting exponents missed (a = 1.5)
    rows = _rows(lambda n, d: 0.05 * n ** 1.5 / d ** 0.5, [16, 64, 256], [1, 4], 5, rng)
    found, reps = cells(rows, boot=200)
    assert _between(found, 2, 5).verdict.word == "contradicted"
    law = fit_law(found, reps)
    assert [f.verdict.word for f in _law_verdicts(law, 5)][1] == "contradicted"
    # A budget that binds: every width below 4x the threshold needs more than half of it
    rows = _rows(lambda n, d: 3 * counting_width(n, d, 2), [16, 64], [1, 4], 5, rng,
                 steps_at=lambda w: 900 if w < 100 else 100)
    found, _ = cells(rows, boot=200)
    assert _budget(found, 5).verdict.word == "contradicted"
