"""Cohen et al. 2021's edge of stability, measured: full-batch gradient descent at a fixed step eta first sharpens, then
its sharpness hovers at 2/eta while the loss keeps falling, non-monotonically.

Per trial, from its logged rows (metrics.hessian on every row of metrics.every):
- the sharpness in units of 2/eta is hessian/edge_ratio / 2 (eta * lambda_max(H) / 2 under one step for every
  parameter; hessian.py), 1 at the edge;
- "in the second half" is the rows at step >= last step / 2 (regime_rules.second_half), and the trial's value there
  is their median (robust to the oscillation around the edge);
- progressive sharpening: the sharpness at init lies below the band and its second-half median is at least twice it;
- the loss keeps falling: the loss at the last row is below the loss at the middle row; the share of logged rows at
  which it rose over the row before is reported (the non-monotone fall), not judged.
The verdict per step size: the Student-t interval over seeds (verdicts.seed_interval) of the second-half median
lies within regime_rules.EOS_BAND (supported), misses it (contradicted), or reaches past it (inconclusive); the
claim holds when it is supported at every step size (verdicts.combine). A lazy run, whose sharpness stays where it
started, far below 2/eta, contradicts it.
"""

from __future__ import annotations

import statistics

from ..metrics import names
from ..metrics.regime_rules import EOS_BAND, HESSIAN_EDGE, second_half
from .plots import SERIES_COLORS, Panel, Series, from_seeds
from .results import SweepResults, Trial, number
from .verdicts import INCONCLUSIVE, SUPPORTED, Finding, Verdict, combine, every_trial, within_band

LR = "train.lr"


def step_size(t: Trial) -> float | None:
    """The trial's fixed train.lr (its column is text: the key also takes auto and lambda_min)."""
    try:
        return number(float(t.row.get(LR)))
    except (TypeError, ValueError):
        return None


def _units(t: Trial) -> tuple[list[int], list[float]]:
    """(steps, sharpness in units of 2/eta) of the trial's logged rows."""
    steps, ratios = t.curve(names.HESSIAN_EDGE_RATIO)
    return steps, [r / HESSIAN_EDGE for r in ratios]


def late_sharpness(t: Trial) -> float | None:
    """The median sharpness in units of 2/eta over the second half of the run; None without such rows."""
    steps, units = _units(t)
    late = second_half(list(zip(steps, units)), steps[-1]) if steps else []
    return statistics.median(late) if late else None


def sharpened(t: Trial) -> bool:
    """Progressive sharpening: from below the band at init to at least twice that in the second half."""
    _, units = _units(t)
    late = late_sharpness(t)
    return bool(units) and late is not None and units[0] < EOS_BAND[0] and late >= 2 * units[0]


def loss_fall(t: Trial) -> tuple[bool, float]:
    """(the loss at the end is below the loss at the middle row, the share of logged rows where the loss rose)."""
    _, loss = t.curve(names.TRAIN_LOSS)
    if len(loss) < 3:
        return False, 0.0
    rises = sum(b > a for a, b in zip(loss, loss[1:])) / (len(loss) - 1)
    return loss[-1] < loss[len(loss) // 2], rises


def eos_findings(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    trials = [t for t in res.usable() if step_size(t) is not None]
    lrs = sorted({step_size(t) for t in trials})
    by_lr = {lr: [t for t in trials if step_size(t) == lr] for lr in lrs}
    verdicts, measured, values = [], [], {}
    for lr, ts in by_lr.items():
        late = [v for t in ts if t.status == "completed" and (v := late_sharpness(t)) is not None]
        v = within_band(late, EOS_BAND, " x 2/η")
        verdicts.append(v)
        values[f"{lr:g}"] = {"mean": v.estimate, "ci95": v.ci95, "seeds": v.seeds, "word": v.word}
        measured.append(f"η = {lr:g}: " + (v.text() if v.estimate is not None else v.reason))
    word = combine(verdicts) if verdicts else INCONCLUSIVE
    why = "at every step size" if word == SUPPORTED else "not at every step size"
    first = Finding("sharpness η·λ_max(H)/2 over the second half of training (median per trial), by step size",
                    f"hovers at 2/η: 1; stated band [{EOS_BAND[0]:g}, {EOS_BAND[1]:g}]", "; ".join(measured),
                    Verdict(word, why, seeds=min((v.seeds for v in verdicts), default=0)), values)
    done = [t for t in trials if t.status == "completed"]
    seeds = len({t.seed for t in done})
    sharp = sum(sharpened(t) for t in done)
    second = Finding("progressive sharpening: the sharpness rises from below the band at init to at least twice it",
                     "every run sharpens until it reaches 2/η", f"{sharp} of {len(done)} trials",
                     every_trial(sharp, len(done), seeds, "sharpen"), {})
    falls = [loss_fall(t) for t in done]
    fell = sum(f for f, _ in falls)
    rises = [r for _, r in falls]
    third = Finding("the loss keeps falling (last row below the middle one); it rose at a share of logged steps",
                    "falls over long times, non-monotonically",
                    f"{fell} of {len(done)} trials fell; the loss rose at "
                    f"{min(rises, default=0):.0%}–{max(rises, default=0):.0%} of logged steps",
                    every_trial(fell, len(done), seeds, "keep falling"),
                    {"rise_share": {f"{lr:g}": [loss_fall(t)[1] for t in ts] for lr, ts in by_lr.items()}})
    return [first, second, third], _panels(by_lr)


def _panels(by_lr: dict[float, list[Trial]]) -> list[Panel]:
    sharp = Panel(title="sharpness λ_max(H) during training; dashed: 2/η of each step (one seed)", xlabel="step",
                  ylabel="hessian/lambda_max")
    loss = Panel(title="training loss (the same runs)", xlabel="step", ylabel="train/loss", ylog=True)
    late = Panel(title="second-half sharpness in units of 2/η, by step (each seed faint; mean with its 95% interval); "
                 f"band [{EOS_BAND[0]:g}, {EOS_BAND[1]:g}]", xlabel="step size η", ylabel="η·λ_max/2", xlog=True)
    for i, (lr, ts) in enumerate(by_lr.items()):
        color = SERIES_COLORS(i % 10)
        seed = min(t.seed for t in ts)
        t = next(t for t in ts if t.seed == seed)
        steps, lam = t.curve(names.HESSIAN_LAMBDA_MAX)
        if steps:
            sharp.series.append(Series(f"η = {lr:g}", steps, lam, meta={"line": True, "color": color}))
            sharp.series.append(Series("_", [steps[0], steps[-1]], [2 / lr, 2 / lr],
                                       meta={"line": True, "style": "--", "color": color}))
        loss.series.append(Series(f"η = {lr:g}", *t.curve(names.TRAIN_LOSS), meta={"line": True, "color": color}))
    per_seed = {}
    for lr, ts in by_lr.items():
        for t in ts:
            if (v := late_sharpness(t)) is not None:
                per_seed.setdefault(t.seed, []).append((lr, v))
    late.series.append(from_seeds("median over the second half", per_seed))
    lrs = list(by_lr)
    if lrs:
        for y in EOS_BAND:
            late.series.append(Series("_", [lrs[0] / 1.3, lrs[-1] * 1.3], [y, y],
                                      meta={"line": True, "style": ":", "color": "black"}))
    return [sharp, loss, late]
