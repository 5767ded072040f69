"""The measured side of each published claim (claims.py): `check(res)` gives, per quantity, the paper's value
beside ours and whether the claim holds here, and the figure the README gallery shows. It reads
only a sweep's results (results.py), so `overparam report` can check any finished sweep that names its claim.

Every finding carries a verdict from verdicts.py (supported / contradicted / inconclusive, with the interval over
seeds it rests on), computed on the trials inside the regime their metrics describe (names.REGIME_FLAGGED are left out).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..metrics import names
from .catapult import catapult_findings
from .claims import CLAIMS
from .edge_of_stability import eos_findings
from .feature_learning import feature_findings
from .kernel_circle import INIT_GAP_CIRCLE, REL_CIRCLE_MOVE, circle_panel, circle_values
from .phase import probed_widths
from .phase_claim import critical_findings
from .plots import SERIES_COLORS, FigureData, Panel, Series, against_width, from_seeds
from .results import WIDTH, SweepResults, Trial, label, number
from .theory import law_text
from .verdicts import (
    CONTRADICTED,
    INCONCLUSIVE,
    MIN_SEEDS,
    SUPPORTED,
    Finding,
    Verdict,
    combine,
    every_trial,
    ordering,
    seed_interval,
)

NOISE = "data.label_noise"


# ------------------------------------------------------------------------------------------------ helpers


def _width_law(res: SweepResults, key: str, exponent: float, quantity: str, paper: str) -> tuple[Finding, Panel]:
    """One finding for a law over every series (depth): contradicted where any series is, supported where all are."""
    fig = against_width(res, key, name=key, title=quantity, caption="", reference=exponent,
                        reference_label=f"paper: {law_text(key, exponent)}")
    fig.panels[0].title = quantity
    fits = [f for f in fig.fits if f.verdict is not None]
    word = combine([f.verdict for f in fits])
    text = "; ".join(f"{f.verdict.text()} ({f.series})" for f in fits)
    reasons = "; ".join(f"{f.series}: {f.verdict.reason}" for f in fits) or "no series has values at two widths"
    verdict = Verdict(word, reasons, fits[0].slope if len(fits) == 1 else None,
                      fits[0].ci95 if len(fits) == 1 else None, min((f.verdict.seeds for f in fits), default=0))
    return Finding(quantity, paper, f"slope {text}" if text else "no data", verdict,
                   {"slopes": {f.series: f.slope for f in fits if f.slope is not None},
                    "ci95": {f.series: f.ci95 for f in fits if f.slope is not None}}), fig.panels[0]


def _by_point(trials: list[Trial], axis: str, value: Callable[[Trial], float | None]) -> dict[float, dict[int, float]]:
    """axis value -> {seed: value}, over the trials that have a value (one per seed and axis value)."""
    acc: dict[float, dict[int, float]] = {}
    for t in trials:
        x, v = number(t.row.get(axis)), value(t)
        if x is not None and v is not None:
            acc.setdefault(x, {})[t.seed] = v
    return dict(sorted(acc.items()))


def _means(by_point: dict[float, dict[int, float]]) -> dict[float, float]:
    return {x: float(np.mean(list(v.values()))) for x, v in by_point.items()}


def _ordering(res: SweepResults, axis: str, value: Callable[[Trial], float | None], direction: float,
              quantity: str, paper: str, key: str, fmt: str = "{:.3g}") -> Finding:
    """A claim that a quantity grows (+1) or falls (-1) along an axis, per seed, within each series (the other
    varying axes, width included, fixed). Contradicted where any series is; supported where all are."""
    axes = [a for a in [WIDTH, *res.series_axes()] if a != axis and (a != WIDTH or res.widths)]
    verdicts, values = [], {}
    groups: dict[tuple, list[Trial]] = {}
    for t in res.in_regime():
        groups.setdefault(tuple(t.row.get(a) for a in axes), []).append(t)
    for gkey, trials in groups.items():
        pts = _by_point(trials, axis, value)
        verdicts.append(ordering(pts, direction))
        where = ", ".join(label(a, v) for a, v in zip(axes, gkey))
        values.update({x if len(groups) == 1 else f"{where}, {x:g}": m for x, m in _means(pts).items()})
    word = combine(verdicts)
    reason = "; ".join(v.text() + f": {v.reason}" for v in verdicts) or "no data"
    one = verdicts[0] if len(verdicts) == 1 else None
    measured = ", ".join(f"{x if isinstance(x, str) else format(x, 'g')}: {fmt.format(y)}" for x, y in values.items())
    return Finding(quantity, paper, f"{measured} — {reason}" if measured else "no data",
                   Verdict(word, reason, one.estimate if one else None, one.ci95 if one else None,
                           min((v.seeds for v in verdicts), default=0)), {key: values})


def _against_axis(res: SweepResults, axis: str, key: str, title: str, value=None) -> Panel:
    """`key` (final value, or `value(trial)`) against a grid axis, one series per width, mean over seeds with its
    interval over seeds (plots.from_seeds)."""
    panel = Panel(title=title, xlabel=axis, ylabel=key)
    value = value or (lambda t: t.final(key))
    for w in res.widths or [None]:
        per_seed: dict[int, list] = {}
        for t in res.in_regime():
            if t.width == w and (x := number(t.row.get(axis))) is not None and (v := value(t)) is not None:
                per_seed.setdefault(t.seed, []).append((x, v))
        panel.series.append(from_seeds(label(WIDTH, w), per_seed))
    return panel


def _ratio_curve(t: Trial, key: str = names.TRAIN_LOSS) -> tuple[list[int], list[float]]:
    xs, ys = t.curve(key)
    if not ys or ys[0] <= 0:
        return [], []
    return xs, [y / ys[0] for y in ys]


# ------------------------------------------------------------------------------------------------ the claims


def _allenzhu(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    return critical_findings(res)  # each seed's own m* is in the report's critical_width figure


def _lee(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    found, panels = [], []
    for key, quantity in ((names.drift_weight_rel("input"), "relative change of the input-layer weights"),
                          (names.NTK_REL_DRIFT, "relative change of the NTK"),
                          (names.NTK_LIN_GAP, "distance to the linearised model (ntk/lin_gap)")):
        f, p = _width_law(res, key, -0.5, quantity, "m^-0.5")
        found.append(f)
        panels.append(p)
    # All layers together: the m x m hidden layers dominate |theta_0|_F ~ m and move O(1), so m^-1 (theory.py).
    f, _ = _width_law(res, names.DRIFT_WEIGHT_REL, -1.0, "relative change of all weights (drift/weight_rel)",
                      "not claimed; m^-1 by theory.py: the m×m layers dominate |θ_0|_F ∝ m and move O(1)")
    found.append(f)
    return found, panels


def _du_bound(t: Trial) -> tuple[list[int], list[float]] | None:
    """(steps, (1 - lr lambda_0 / (2n))^step) for a trial, lambda_0 = lambda_min(K_inf) per output. Only where
    train/lr is the step of K_inf's scale (model.param=ntk) and data.classes counts the outputs (synthetic data)."""
    if t.row.get("model.param") != "ntk" or t.row.get("data.name") != "synthetic":
        return None
    lam_trace, n, outputs = number(t.row.get(names.NTK_LAMBDA_MIN_INF)), number(t.row.get("data.n")), \
        number(t.row.get("data.classes"))
    _, lrs = t.curve(names.TRAIN_LR)
    if lam_trace is None or not n or not outputs or not lrs:
        return None
    q = 1.0 - lrs[0] * (lam_trace / outputs) / (2.0 * n)
    xs, _ = t.curve(names.TRAIN_LOSS)
    return xs, [q ** s for s in xs]


def _du(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    out = [_ordering(res, WIDTH, lambda t: t.final(names.DRIFT_ACT_FLIP), -1.0,
                     "activation-pattern changes (drift/act_flip) as m grows", "fewer", "act_flip")]
    f, neuron_panel = _width_law(res, names.DRIFT_NEURON_MAX, -0.5, "max per-neuron distance from init",
                                 "O(m^-1/2)")
    out.append(f)
    rate = Panel(title="loss / loss at init, and the paper's bound (dashed)", xlabel="step", ylabel="L_t / L_0",
                 ylog=True)
    worst, ends, under = 0.0, {}, 0
    widths = res.widths
    for t in sorted(res.in_regime(), key=lambda t: (t.width or 0, t.seed)):
        xs, ys = _ratio_curve(t)
        bound = _du_bound(t)
        if not xs or bound is None:
            continue
        ratio = max((y / b for x, y, b in zip(xs, ys, bound[1]) if x > 0), default=0.0)  # step 0 is 1 / 1
        worst, under = max(worst, ratio), under + (ratio <= 1.0 + 1e-9)
        ends.setdefault(t.width, []).append((ys[-1], bound[1][-1], xs[-1]))
        i = widths.index(t.width) if t.width in widths else 0
        color = SERIES_COLORS(i % 10)
        rate.series.append(Series(label(WIDTH, t.width) if t.seed == min(x.seed for x in res.usable()) else "_",
                                  xs, ys, meta={"line": True, "color": color, "width": t.width}))
        rate.references.append(Series("_" if rate.references else "paper's bound (1 − lr·λ_0/(2n))^k", *bound))
    text = "; ".join(f"{label(WIDTH, w)}: {np.mean([e[0] for e in v]):.2g} vs bound {np.mean([e[1] for e in v]):.2g} "
                     f"at step {v[0][2]}" for w, v in ends.items())
    out.append(Finding("training loss against the linear-rate bound", "L_k/L_0 ≤ (1 − ηλ_0/2)^k at every k",
                       (text + f"; max over steps of measured/bound {worst:.3g}") if ends else "no data",
                       every_trial(under, sum(len(v) for v in ends.values()), _seeds(res),
                                   "stay under the bound at every step"), {"worst_ratio_to_bound": worst}))
    flip_panel = against_width(res, names.DRIFT_ACT_FLIP, name="act_flip", title="", caption="").panels[0]
    flip_panel.title = "activation flips against width"
    return out, [flip_panel, neuron_panel, rate]


def _seeds(res: SweepResults) -> int:
    return len({t.seed for t in res.in_regime()})


def _fit_steps(t: Trial) -> float | None:
    return number(t.row.get(names.CONV_STEPS_TO_FIT))


def _zhang(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    trials = res.in_regime()
    by_noise: dict[float, list[Trial]] = {}
    for t in trials:
        by_noise.setdefault(number(t.row.get(NOISE)), []).append(t)
    fitted = {x: f"{sum(_fit_steps(t) is not None for t in ts)}/{len(ts)}" for x, ts in sorted(by_noise.items())}
    n_fit = sum(_fit_steps(t) is not None for t in trials)
    fit = _fit_words(trials)
    return [Finding(f"trials that fit ({fit}), by label noise", "all, at every noise level",
                    ", ".join(f"{x:g}: {v}" for x, v in fitted.items()),
                    every_trial(n_fit, len(trials), _seeds(res), f"fit ({fit})"), {"fitted": fitted}),
            _ordering(res, NOISE, _fit_steps, 1.0, f"steps to fit ({fit}), by label noise (mean)",
                      "grow with the noise", "steps_to_fit", "{:.0f}"),
            _to_chance(res)], \
        [_against_axis(res, NOISE, names.CONV_STEPS_TO_FIT, f"steps to fit ({fit})", _fit_steps),
         _against_axis(res, NOISE, names.TEST_ACC, "held-out accuracy (test/acc) at the end"),
         _by_noise(res, [(names.TRAIN_ACC, "-")], "train accuracy during training", ylog=False)]


def _fit_words(trials: list[Trial]) -> str:
    """What conv/steps_to_fit meant in these trials (train.py's fitted)."""
    ratio = {number(t.row.get("train.target_ratio")) for t in trials} - {None, 0.0}
    loss = {number(t.row.get("train.target_loss")) for t in trials} - {None, 0.0}
    if ratio or loss:
        return " or ".join([f"loss ≤ {r:g} × its value at init" for r in sorted(ratio)] +
                           [f"loss < {v:g}" for v in sorted(loss)])
    return "100% train accuracy"


def _to_chance(res: SweepResults) -> Finding:
    """Held-out accuracy falls with the label noise (an ordering) to chance at the largest noise: there, the interval
    over seeds must contain 1/classes (contradicted where it excludes it)."""
    falls = _ordering(res, NOISE, lambda t: t.final(names.TEST_ACC), -1.0, "", "", "test_acc")
    top = max((n for t in res.in_regime() if (n := number(t.row.get(NOISE))) is not None), default=None)
    accs = [a for t in res.in_regime()
            if number(t.row.get(NOISE)) == top and (a := t.final(names.TEST_ACC)) is not None]
    classes = number(res.trials[0].row.get("data.classes")) if res.trials else None
    chance = 1 / classes if classes else None
    if len(accs) < MIN_SEEDS or chance is None:
        at = Verdict(INCONCLUSIVE, f"{len(accs)} held-out accuracies at noise {top}: a verdict needs {MIN_SEEDS}")
    else:
        mean, (lo, hi) = seed_interval(accs)
        inside = lo <= chance <= hi
        at = Verdict(SUPPORTED if inside else CONTRADICTED, f"at noise {top:g}: {mean:.3f} [{lo:.3f}, {hi:.3f}] "
                     f"{'contains' if inside else 'excludes'} chance {chance:.3g}", mean, (lo, hi), len(accs))
    return Finding("held-out accuracy (test/acc), by label noise", "falls with the noise, to chance at noise 1",
                   falls.measured, Verdict(combine([falls.verdict, at]), f"{falls.verdict.reason}; {at.reason}",
                                           at.estimate, at.ci95, at.seeds), falls.values)


def _lin_deviation(t: Trial) -> float | None:
    """max over logged steps of |train/loss - ntk/lin_loss| / (|y|^2 / 2n), the loss of the zero predictor. Arora et
    al. have f_0 ~ 0 (a small init scale), so their loss starts there; ours starts at |f_0 - y|^2 / 2n, larger by
    the net's output at init, and would shrink the gap by a factor that changes with the input scale. Label targets
    under mse are one-hot rows, |y_i| = 1: the normaliser is 1/2; other targets have none here (None)."""
    if t.row.get("data.target") != "labels" or t.row.get("train.loss", "mse") != "mse":
        return None
    rows = [(number(r.get(names.TRAIN_LOSS)), number(r.get(names.NTK_LIN_LOSS))) for r in t.history]
    rows = [(a, b) for a, b in rows if a is not None and b is not None]
    return max(abs(a - b) for a, b in rows) / 0.5 if rows else None


def _arora(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    trials = res.in_regime()
    out = [_ordering(res, NOISE, lambda t, key=key: t.final(key), 1.0, f"label complexity from {which}, by label noise",
                     "grows with the noise", "label_complexity")
           for key, which in ((names.NTK_LABEL_COMPLEXITY, "K_0"), (names.NTK_LABEL_COMPLEXITY_INF, "K∞"))]
    out.append(_ordering(res, WIDTH, _lin_deviation, -1.0,
                         "max |loss − eigen-projection prediction| / (‖y‖²/2n), by width",
                         "→ 0 as the width grows", "deviation"))
    pred = _by_noise(res, [(names.TRAIN_LOSS, "-"), (names.NTK_LIN_LOSS, "--")],
                     "training loss (solid) and prediction ntk/lin_loss (dashed)")
    complexity = _against_axis(res, NOISE, names.NTK_LABEL_COMPLEXITY, "label complexity at init: K_0, and K∞ "
                               "(dotted)")
    inf = _means(_by_point(trials, NOISE, lambda t: t.final(names.NTK_LABEL_COMPLEXITY_INF)))
    if inf:
        complexity.extra.append(Series("K∞", list(inf), list(inf.values()), meta={"infinite_width": True}))
    return out, [complexity, pred]


def _by_noise(res: SweepResults, keys: list[tuple[str, str]], title: str, ylog: bool = True) -> Panel:
    """Curves over steps of the widest width's first seed, one colour per label-noise level, one line style per
    key."""
    trials = res.in_regime()
    width, seed = max(res.widths, default=None), min((t.seed for t in trials), default=0)
    chosen = sorted((t for t in trials if t.width == width and t.seed == seed), key=lambda t: number(t.row.get(NOISE)))
    panel = Panel(title=f"{title}, {label(WIDTH, width)}, seed {seed}", xlabel="step", ylabel=keys[0][0], ylog=ylog)
    for i, t in enumerate(chosen):
        for j, (key, style) in enumerate(keys):
            panel.series.append(Series(f"noise {t.row.get(NOISE)}" if j == 0 else "_", *t.curve(key),
                                       meta={"line": True, "style": style,
                                             "color": SERIES_COLORS(i % 10)}))
    return panel


def _jacot(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    gap, p0 = _width_law(res, names.NTK_INIT_GAP, -0.5, "distance of K_0 from K∞", "→ 0 (CLT rate m^-0.5)")
    drift, p1 = _width_law(res, names.NTK_REL_DRIFT, -0.5, "relative change of the NTK in training",
                           "→ 0 (constant kernel; rate m^-0.5)")
    order = _ordering(res, WIDTH, lambda t: t.final(names.NTK_REL_DRIFT), -1.0, "|K_T − K_0| / |K_0| by width",
                      "moves at small width, barely at large", "rel_drift")
    circle = [_ordering(res, WIDTH, lambda t, k=key: (circle_values(t) or {}).get(k), -1.0, quantity, paper, key)
              for key, quantity, paper in (
                  (REL_CIRCLE_MOVE, "the kernel along a circle (Figure 1): |Θ_T − Θ_0| / |Θ_0| over γ, by width",
                   "moves at small width, barely at large"),
                  (INIT_GAP_CIRCLE, "the kernel along a circle at init: |Θ_0 − K∞| / |K∞| over γ, by width",
                   "→ K∞ as the width grows"))]
    panel = circle_panel(res)
    return [gap, drift, order, *[f for f in circle if f.measured != "no data"]], \
        [p0, p1] + ([panel] if panel is not None else [])


CHECKS: dict[str, Callable[[SweepResults], tuple[list[Finding], list[Panel]]]] = {
    "allenzhu2018_critical_width": _allenzhu, "lee2019_linear": _lee, "du2018_two_layer": _du,
    "zhang2017_random_labels": _zhang, "arora2019_fine_grained": _arora, "jacot2018_kernel": _jacot,
    "lewkowycz2020_catapult": catapult_findings, "cohen2021_edge_of_stability": eos_findings,
    "yang2021_feature_learning": feature_findings,
}
assert set(CHECKS) == set(CLAIMS)


def check(res: SweepResults) -> tuple[list[Finding], FigureData | None]:
    """The claim's findings and its figure, repro_<claim>.png (the README gallery's picture), from one run of its
    check (a critical width's bootstrap takes seconds: a report runs it once)."""
    if not res.reproduces:
        return [], None
    claim = CLAIMS[res.reproduces]
    found, panels = CHECKS[res.reproduces](res)
    return found, FigureData(name=f"repro_{claim.key}", title=f"{claim.short}: {claim.title}",
                             caption=f"{claim.claim} This run: {this_run(res)}", panels=panels) if panels else None


def findings(res: SweepResults) -> list[Finding]:
    return check(res)[0]


# What a run's setup is described by: (config key, how it is named). Values are read from the trials themselves, so a
# --quick variant's report describes the quick setup and not the full file's.
SETUP_KEYS = (("model.param", "param"), ("model.width", "widths"), ("model.depth", "depths"), ("data.name", "data"),
              ("data.n", "n"), ("data.input_norm", "inputs"), ("data.label_noise", "label noise"),
              ("train.steps", "steps at most"), ("train.target_ratio", "fit at loss ≤ this × init"))


def this_run(res: SweepResults) -> str:
    """The setup the trials of this sweep actually ran, e.g. 'the --quick variant: param ntk; widths 128, 2048; ...;
    3 seeds'."""
    parts = []
    for key, name in SETUP_KEYS:
        values = sorted({v for t in res.trials if (v := t.row.get(key)) not in (None, "")},
                        key=lambda v: (isinstance(v, str), v if not isinstance(v, str) else 0, str(v)))
        if key == "model.width" and res.critical_width:
            values = sorted({int(w) for r in res.critical_width for w in probed_widths(r)})
            name = "widths probed"
        if values and not (key == "train.target_ratio" and values == [0.0]):
            shown = values if len(values) <= 8 else [values[0], "…", values[-1]]
            parts.append(f"{name} {', '.join(format(v, 'g') if isinstance(v, float) else str(v) for v in shown)}")
    seeds = len({t.seed for t in res.trials})
    head = "the --quick variant" if res.name.endswith("-quick") else f"configs/repro/{res.reproduces}.yaml"
    return f"{head}: " + "; ".join(parts) + f"; {seeds} seed{'s' if seeds != 1 else ''}."
