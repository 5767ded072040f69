"""The critical width as a phase transition (analysis/phase.py): m*_50 from seeds' brackets by an interval-censored
logistic fit, its bootstrap interval, the power law over cells and the verdicts, on brackets drawn from known laws:
ones built to pass and ones built to fail."""

import json
import math

import numpy as np
import pytest

from overparam_dist.analysis.phase import Bracket, bracket, cells, censored, counting_width, fit_law, fit_logistic
from overparam_dist.analysis.phase_claim import _between, _budget, _law_verdicts

GRID = [round(4 * 2 ** (k / 4)) for k in range(33)]  # 4 .. 1024, ratio 2^(1/4)
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
    # A median outside the grid gives no m*_50 (it would be the grid's): half or more fitting at no width, or at
    # the smallest one
    assert fit_logistic([Bracket(512, math.inf)] * 3 + [Bracket(8, 11)] * 2) is None
    assert censored([Bracket(0, 4)] * 3 + [Bracket(4, 5)] * 2) == "below"
    # Seeds split between a small width and none at all: the median is in (4, 5], whatever the logistic says
    mu, _ = fit_logistic([Bracket(4, 5)] * 3 + [Bracket(362, math.inf)] * 2)
    assert 4 < math.exp(mu) <= 5
    # Half the budget: a probe that fitted after budget / 2 steps did not fit within it; one that did not fit at all
    # (a flagged probe has a step but no fit) did not either.
    late = bracket(_search(40, steps_at=lambda w: 800 if w < 60 else 100), BUDGET / 2)
    assert late.lo < 60 <= late.hi
    flagged = {"probed_widths": json.dumps({"4": False, "8": True}), "probed_steps": json.dumps({"4": 10, "8": 20})}
    assert bracket(flagged, BUDGET / 2) == Bracket(4, 8)


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
    words = [f.verdict.word for f in _law_verdicts(law, 5, found)]
    assert words == ["supported", "supported", "supported"]
    assert law["top"]["a_ci95"][0] <= 0.5 <= law["top"]["a_ci95"][1]  # the local exponent at the largest n
    assert _between(found, 2, 5).verdict.word == "supported"
    assert _budget(found, 5).verdict.word == "supported"


def test_built_to_fail_exponential_growth_and_a_binding_budget_and_too_narrow_nets():
    rng = np.random.default_rng(2)
    # m* = exp(n / 12): 4, 14, 207, then 43000 at n = 128, past the grid (1024): no law is claimed
    rows = _rows(lambda n, d: math.exp(n / 12), [16, 32, 64, 128], [1, 2], 5, rng, scale=0.1)
    found, reps = cells(rows, boot=200)
    poly = _law_verdicts(fit_law(found, reps, GRID[-1]), 5, found)[0]
    assert poly.verdict.word == "inconclusive" and "beyond the widest probed width" in poly.verdict.reason, poly
    # m* = n^2.5 / 8 at n = 32..181: the local exponent over 128..181 can reach at most log(1024 / 724) / log(1.41)
    # = 1 on this grid: the measurement is cut off, and no bounded exponent is claimed
    rows = _rows(lambda n, d: n ** 2.5 / 8, [32, 64, 128, 181], [1, 2], 5, rng, scale=0.1)
    found, reps = cells(rows, boot=200)
    poly = _law_verdicts(fit_law(found, reps, GRID[-1]), 5, found)[0]
    assert poly.verdict.word == "inconclusive", poly.verdict
    # A polynomial with an offset (m* = 4 + n, convex in log-log at small n) is supported
    rows = _rows(lambda n, d: 4 + n, [8, 16, 32, 64, 128, 256], [1, 2], 5, rng, scale=0.1)
    found, reps = cells(rows, boot=200)
    assert _law_verdicts(fit_law(found, reps, GRID[-1]), 5, found)[0].verdict.word == "supported"
    # m* at half the counting width: contradicted
    rows = _rows(lambda n, d: 0.5 * counting_width(n, d, 2), [64, 256, 1024], [1], 5, np.random.default_rng(2))
    found, reps = cells(rows, boot=200)
    assert _between(found, 2, 5).verdict.word == "contradicted", _between(found, 2, 5)
    # m* = 0.02 n^1.5: the exponent of n misses counting's 1/2
    rows = _rows(lambda n, d: 0.02 * n ** 1.5, [64, 128, 256], [1, 2], 5, rng)
    found, reps = cells(rows, boot=200)
    law = fit_law(found, reps)
    assert [f.verdict.word for f in _law_verdicts(law, 5, found)][1] == "contradicted"
    # A budget that binds: every width below 4x the threshold needs more than half of it
    rows = _rows(lambda n, d: 3 * counting_width(n, d, 2), [16, 64], [1, 4], 5, rng,
                 steps_at=lambda w: 900 if w < 100 else 100)
    found, _ = cells(rows, boot=200)
    assert _budget(found, 5).verdict.word == "contradicted"
    for r in rows:  # rows without the step record decide nothing about the budget
        r.pop("probed_steps")
    found, _ = cells(rows, boot=200)
    assert _budget(found, 5).verdict.word == "inconclusive"
