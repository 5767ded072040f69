r"""Verdicts: the one place a report, a claim card, the demo's table or W&B decides whether a measured law holds.
Each verdict is a word, `supported`, `contradicted` or `inconclusive`, with the interval it rests on and the reason.

Intervals come from the seeds, never from the residuals of one seed's fit. Each seed gives one estimate (the slope
of its own log-log fit over the widths, or its own difference between two points of an axis); the interval is the
mean of those S estimates +- t_{0.975, S-1} sd / sqrt(S): the two-stage (summary-statistics) form of a hierarchical
model with a random effect per seed. Not a bootstrap over seeds: with the S = 3 seeds a study affords, resampling
seeds has 10 distinct outcomes and its percentile interval is about the range of the 3 estimates, which covers the
mean far less than 95% of the time; the t quantile (4.30 at S = 3) pays for that honestly.

Width law y ~ m^e, tolerance band B = [e - tol, e + tol] (tol = SLOPE_TOL):
- supported: at least MIN_SEEDS seeds, the interval excludes 0 on the side of e (all of it below 0 for e < 0),
  and it meets B (it contains e, or comes within tol of it). For e = 0 (the law "does not change with width"):
  the interval lies inside B.
- contradicted: at least MIN_SEEDS seeds and the interval misses B altogether.
- Where the theory gives only an upper bound, y = O(m^e) (theory.BOUNDS: how far weights, kernel and linearisation
  move), B = (-inf, e + tol]: falling faster than the bound is consistent with it (the NTK's change, bounded by
  O(m^-1/2), fell like m^-0.86 [-0.99, -0.72] in the jacot reproduction on |x|^2 = d inputs), and only a slower fall
  contradicts it.
- inconclusive: everything else, e.g. an interval that contains both 0 and e, and always below MIN_SEEDS seeds.

Ordering (a quantity grows, or falls, along an axis such as label noise or width), from each seed's values:
- supported: the difference between the two end points of the axis, taken per seed, has an interval on the claimed
  side of 0, and no step between neighbouring points moves the other way by more than its own interval (each of
  the k steps at the Bonferroni level 1 - 0.05/k, so a flat stretch of many steps does not contradict by chance);
- contradicted: the end-to-end interval lies on the wrong side of 0, or a step moves the wrong way beyond its
  interval;
- inconclusive: everything else, and always below MIN_SEEDS seeds with values at both ends.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
WORDS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
MIN_SEEDS = 3
SLOPE_TOL = 0.2  # how far from the theory's exponent an interval may lie and still support the law


@dataclass(frozen=True)
class Verdict:
    word: str
    reason: str
    estimate: float | None = None  # the mean over seeds (a slope, or an end-to-end difference)
    ci95: tuple[float, float] | None = None
    seeds: int = 0

    def text(self) -> str:
        """'-0.48 [-0.61, -0.35] (3 seeds): supported' for tables."""
        if self.estimate is None:
            return f"{self.word} ({self.reason})"
        ci = f" [{self.ci95[0]:.2f}, {self.ci95[1]:.2f}]" if self.ci95 else ""
        return f"{self.estimate:.2f}{ci} ({self.seeds} seed{'s' * (self.seeds != 1)}): {self.word}"


@dataclass
class Finding:
    """One measured quantity of a published claim (repro.py, phase.py): the paper's value beside ours, and the
    verdict on it."""
    quantity: str
    paper: str
    measured: str
    verdict: Verdict
    values: dict[str, Any] = field(default_factory=dict)  # the numbers behind `measured`, for tests and JSON


def _t_quantile(q: float, dof: int) -> float:
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def seed_interval(estimates: list[float], level: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """(mean, Student-t interval at `level` over the seeds' estimates); no interval from fewer than 2 seeds."""
    s = len(estimates)
    mean = math.fsum(estimates) / s
    if s < 2:
        return mean, None
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in estimates) / (s - 1))
    half = _t_quantile(1 - (1 - level) / 2, s - 1) * sd / math.sqrt(s)
    return mean, (mean - half, mean + half)


def combine(verdicts: list[Verdict]) -> str:
    """One word for a claim tested on several series: contradicted where any is, supported where all are."""
    words = [v.word for v in verdicts]
    if CONTRADICTED in words:
        return CONTRADICTED
    return SUPPORTED if words and all(w == SUPPORTED for w in words) else INCONCLUSIVE


def width_law(per_seed_slopes: Mapping[int, float], exponent: float, tol: float = SLOPE_TOL,
              bound: bool = False) -> Verdict:
    """The verdict on y ~ m^exponent from each seed's fitted log-log slope (module doc). bound: the theory says
    y = O(m^exponent), an upper bound, so a faster fall is no contradiction: the band extends down to -inf."""
    slopes = [float(v) for v in per_seed_slopes.values() if v is not None and math.isfinite(v)]
    if not slopes:
        return Verdict(INCONCLUSIVE, "no seed has values at two widths")
    mean, ci = seed_interval(slopes)
    s = len(slopes)
    if s < MIN_SEEDS or ci is None:
        return Verdict(INCONCLUSIVE, f"{s} seed{'s' * (s != 1)}: a verdict needs at least {MIN_SEEDS}", mean, ci, s)
    lo, hi = ci
    band = (-math.inf if bound else exponent - tol, exponent + tol)
    meets = lo <= band[1] and hi >= band[0]
    law = f"O(m^{exponent:g})" if bound else f"m^{exponent:g} ± {tol:g}"
    if not meets:
        why = f"the interval lies above {exponent + tol:g}: slower than {law}" if bound else \
            f"the interval misses {law}"
        return Verdict(CONTRADICTED, why, mean, ci, s)
    if exponent == 0 and bound:
        return Verdict(SUPPORTED, f"the interval stays under +{tol:g}: {law}", mean, ci, s)
    if exponent == 0:
        if band[0] <= lo and hi <= band[1]:
            return Verdict(SUPPORTED, f"the interval lies within ±{tol:g} of 0", mean, ci, s)
        return Verdict(INCONCLUSIVE, f"the interval reaches past ±{tol:g}", mean, ci, s)
    if (hi < 0) if exponent < 0 else (lo > 0):
        return Verdict(SUPPORTED, f"the interval excludes 0 and meets {law}", mean, ci, s)
    return Verdict(INCONCLUSIVE, "the interval contains 0: no width law is shown", mean, ci, s)


def _differences(a: Mapping[int, float], b: Mapping[int, float], sign: float) -> list[float]:
    """sign * (b - a) for every seed with a value at both points."""
    return [sign * (b[s] - a[s]) for s in a if s in b and a[s] is not None and b[s] is not None]


def ordering(by_point: Mapping[float, Mapping[int, float]], direction: float) -> Verdict:
    """The verdict on 'the quantity moves `direction` (+1 grows, -1 falls) along the axis', from
    {axis value: {seed: value}} (module doc). The estimate is the mean end-to-end change, signed as measured."""
    points = [x for x in sorted(by_point) if by_point[x]]
    if len(points) < 2:
        return Verdict(INCONCLUSIVE, "fewer than two points of the axis have values")
    sign = 1.0 if direction > 0 else -1.0
    ends = _differences(by_point[points[0]], by_point[points[-1]], sign)
    s = len(ends)
    if s < MIN_SEEDS:
        mean = sign * math.fsum(ends) / s if ends else None
        return Verdict(INCONCLUSIVE, f"{s} seed{'s' * (s != 1)} with values at both ends: a verdict needs at least "
                       f"{MIN_SEEDS}", mean, None, s)
    mean, (lo, hi) = seed_interval(ends)
    signed_ci = (lo, hi) if sign > 0 else (-hi, -lo)
    against = []
    level = 1 - 0.05 / (len(points) - 1)  # Bonferroni over the steps
    for a, b in zip(points, points[1:]):
        steps = _differences(by_point[a], by_point[b], sign)
        if len(steps) >= 2:
            _, (slo, shi) = seed_interval(steps, level)
            if shi < 0:
                against.append(f"{a:g}→{b:g}")
    word_dir = "grows" if sign > 0 else "falls"
    if hi < 0 or against:
        why = ("it moves the other way from end to end" if hi < 0 else
               f"it moves the other way beyond the seeds' spread at {', '.join(against)}")
        return Verdict(CONTRADICTED, f"claimed: {word_dir}; {why}", sign * mean, signed_ci, s)
    if lo > 0:
        return Verdict(SUPPORTED, f"it {word_dir} from end to end beyond the seeds' spread", sign * mean,
                       signed_ci, s)
    return Verdict(INCONCLUSIVE, "the end-to-end change is within the seeds' spread", sign * mean, signed_ci, s)


def within_band(values: list[float], band: tuple[float, float], unit: str = "") -> Verdict:
    """The verdict on 'the quantity lies in `band`' from each seed's value: supported when the interval over seeds
    lies inside it, contradicted when it misses it altogether, inconclusive when it reaches past it, and always
    below MIN_SEEDS seeds."""
    s = len(values)
    if s < MIN_SEEDS:
        return Verdict(INCONCLUSIVE, f"{s} seed{'s' * (s != 1)}: a verdict needs {MIN_SEEDS}", None, None, s)
    mean, ci = seed_interval(values)
    inside = band[0] <= ci[0] and ci[1] <= band[1]
    missed = ci[1] < band[0] or ci[0] > band[1]
    how = "lies within" if inside else "misses" if missed else "reaches past"
    return Verdict(SUPPORTED if inside else CONTRADICTED if missed else INCONCLUSIVE,
                   f"the interval {how} [{band[0]:g}, {band[1]:g}]{unit}", mean, ci, s)


def every_trial(passed: int, total: int, seeds: int, what: str, unit: str = "trials") -> Verdict:
    """A claim about every trial (every cell fits, every trial stays under a bound): contradicted by one
    counterexample, supported only when all pass and at least MIN_SEEDS seeds back it."""
    if total == 0:
        return Verdict(INCONCLUSIVE, "no trials with values")
    if passed < total:
        return Verdict(CONTRADICTED, f"{total - passed} of {total} {unit} do not {what}", passed / total, None,
                       seeds)
    if seeds < MIN_SEEDS:
        return Verdict(INCONCLUSIVE, f"{seeds} seed{'s' * (seeds != 1)}: a verdict needs at least {MIN_SEEDS}",
                       1.0, None, seeds)
    return Verdict(SUPPORTED, f"all {total} {unit} {what}", 1.0, None, seeds)
