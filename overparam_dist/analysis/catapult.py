"""Lewkowycz et al. 2020's catapult, measured from behaviour: where along the step lr·λ_0/n the dynamics leave the
lazy phase, against the predicted η_crit = 2.

Each trial's x is its own edge ratio at init, regime/edge_ratio_init = lr·λ_max(Θ_0)/n (regime.py), so the axis is
the paper's η λ_0 / n measured, not the configured train.lr_scale. Its phase, from what it did and never from x:
- `catapult`: the loss rose above its value at init (regime/loss_rise > 1 + SPIKE) and the kernel's edge ratio at
  the end fell below the one at init and below the edge 2 (λ_max(K) fell below 2n/η): the paper's signature;
- `diverged`: the loss went non-finite or ended above its start, or the net died (regime `diverged` or `dead`: the
  paper's η > η_max);
- `lazy`: everything else.
Per width and seed, the lazy-catapult boundary lies between the largest x that stayed lazy below the smallest x
that catapulted; its geometric middle is the seed's estimate, and the verdict takes the Student-t interval over the
seeds at the widest width (verdicts.seed_interval) against BAND around 2. regime.py names trials past the edge
`catapult` by their x alone; this module does not read that word, so its boundary can land anywhere.
"""

from __future__ import annotations

import math

from ..metrics import names
from ..metrics.regime_rules import SPIKE
from .plots import SERIES_COLORS, Panel, Series
from .results import WIDTH, SweepResults, Trial, label, number
from .verdicts import INCONCLUSIVE, MIN_SEEDS, Finding, Verdict, every_trial, within_band

ETA_CRIT = 2.0  # the predicted lazy-catapult boundary in lr·λ_0/n (the edge of stability of the linearised model)
BAND = (1.6, 2.5)  # the stated interval the measured boundary must lie in (within 25% of η_crit)
ETA_MAX = {"linear two-layer": 4.0, "ReLU": 12.0}  # the paper's divergence boundary


def phase(t: Trial) -> str | None:
    """lazy / catapult / diverged from the trial's summary (module doc); None without the numbers."""
    regime = t.row.get(names.REGIME)
    if t.status == "diverged" or regime in ("diverged", "dead"):
        return "diverged"
    rise, e0, e1 = (number(t.row.get(k)) for k in (names.REGIME_LOSS_RISE, names.REGIME_EDGE_RATIO_INIT,
                                                 names.REGIME_EDGE_RATIO))
    if rise is None or e0 is None or e1 is None:
        return None
    return "catapult" if rise > 1 + SPIKE and e1 < e0 and e1 < ETA_CRIT else "lazy"


def _x(t: Trial) -> float | None:
    return number(t.row.get(names.REGIME_EDGE_RATIO_INIT))


def boundaries(trials: list[Trial]) -> dict[int, float]:
    """seed -> the geometric middle of its lazy-catapult bracket (only seeds with trials on both sides)."""
    out = {}
    for seed in sorted({t.seed for t in trials}):
        mine = [(x, p) for t in trials if t.seed == seed and (x := _x(t)) is not None and (p := phase(t))]
        lazy = [x for x, p in mine if p == "lazy"]
        cat = [x for x, p in mine if p == "catapult"]
        if lazy and cat:
            hi = min(cat)
            lo = max((x for x in lazy if x < hi), default=None)
            if lo is not None:
                out[seed] = math.sqrt(lo * hi)
    return out


def catapult_findings(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    trials = [t for t in res.usable() if t.width is not None]
    widest = max((t.width for t in trials), default=None)
    top = [t for t in trials if t.width == widest]
    found = boundaries(top)
    seeds = len(found)
    if seeds < MIN_SEEDS:
        verdict = Verdict(INCONCLUSIVE, f"{seeds} seed(s) with a lazy-catapult bracket at m = {widest}: a verdict "
                          f"needs {MIN_SEEDS}", seeds=seeds)
        measured = "no bracket" if not found else ", ".join(f"{v:.2f}" for v in found.values())
    else:
        verdict = within_band(list(found.values()), BAND)
        mean, ci = verdict.estimate, verdict.ci95
        measured = f"{mean:.2f} [{ci[0]:.2f}, {ci[1]:.2f}] at m = {widest}"
    by_width = {w: boundaries([t for t in trials if t.width == w]) for w in sorted({t.width for t in trials})}
    first = Finding("lazy-catapult boundary in lr·λ_0/n (widest width, from each trial's behaviour)",
                    f"η_crit = {ETA_CRIT:g}; stated band [{BAND[0]:g}, {BAND[1]:g}]", measured, verdict,
                    {"by_width": {str(w): v for w, v in by_width.items()}})
    cats = [t for t in trials if phase(t) == "catapult"]
    fell = sum(number(t.row.get(names.REGIME_EDGE_RATIO)) < ETA_CRIT for t in cats)
    second = Finding("in the catapult, λ_max(K) ends below 2n/η", "every catapult trial",
                     f"{fell} of {len(cats)}", every_trial(fell, len(cats), len({t.seed for t in cats}),
                                                          "end with an edge ratio below 2"), {})
    div = sorted(x for t in top if phase(t) == "diverged" and (x := _x(t)) is not None)
    ok = [x for t in top if phase(t) != "diverged" and (x := _x(t)) is not None]
    third = Finding("divergence boundary η_max in lr·λ_0/n (widest width)",
                    "≈ 4 (two-layer linear), ≈ 12 (ReLU)",
                    (f"between {max((x for x in ok if x < div[0]), default=0):.3g} and {div[0]:.3g}" if div else
                     f"above {max(ok, default=0):.3g} (nothing diverged)"),
                    Verdict(INCONCLUSIVE, "reported, not judged: the paper gives η_max only roughly"), {})
    return [first, second, third], _panels(res, trials, widest)


def _panels(res: SweepResults, trials: list[Trial], widest) -> list[Panel]:
    widths = sorted({t.width for t in trials})
    diagram = Panel(title="phase of each trial: lazy (o), catapult (^), diverged (x); dashed: η_crit = 2, dotted: "
                    "the paper's η_max ≈ 12 (ReLU)", xlabel="lr·λ_0/n at init", ylabel="width m", xlog=True,
                    ylog=True)
    style = {"lazy": ("o", "tab:blue"), "catapult": ("^", "tab:orange"), "diverged": ("x", "tab:red")}
    for p, (marker, color) in style.items():
        pts = sorted((_x(t), t.width * 2 ** (0.06 * (t.seed - 1))) for t in trials if phase(t) == p and _x(t))
        if pts:
            diagram.series.append(Series(p, [a for a, _ in pts], [b for _, b in pts],
                                         meta={"line": True, "style": marker, "color": color}))
    for x, st in ((ETA_CRIT, "--"), (ETA_MAX["ReLU"], ":")):
        diagram.series.append(Series("_", [x, x], [min(widths) / 1.5, max(widths) * 1.5],
                                     meta={"line": True, "style": st, "color": "black"}))
    chosen = sorted((t for t in trials if t.width == widest and t.seed == min(x.seed for x in trials)),
                    key=lambda t: _x(t) or 0)
    chosen = [t for t in chosen if phase(t) != "diverged"][::3][:4]
    edge = Panel(title=f"lr·λ_max(K_t)/n during training ({label(WIDTH, widest)}); dashed: 2", xlabel="step",
                 ylabel="edge ratio", ylog=True)
    loss = Panel(title="training loss (the catapult: a spike, then the fall)", xlabel="step", ylabel="train/loss",
                 ylog=True)
    for i, t in enumerate(chosen):
        color = SERIES_COLORS(i % 10)
        steps, lams = t.curve(names.NTK_LAMBDA_MAX)
        lr, n, outputs = t.final(names.TRAIN_LR), number(t.row.get("data.n")), number(t.row.get("data.classes"))
        if lams and lr and n and outputs:  # the trace kernel sums C i.i.d. outputs: lambda_max(K) is 1/C of its
            edge.series.append(Series(f"{_x(t):.2g} at init", steps, [lr * v / (n * outputs) for v in lams],
                                      meta={"line": True, "color": color}))
        loss.series.append(Series(f"{_x(t):.2g} at init", *t.curve(names.TRAIN_LOSS),
                                  meta={"line": True, "color": color}))
    if edge.series:
        edge.series.append(Series("_", [0, max(edge.series[0].x)], [ETA_CRIT, ETA_CRIT],
                                  meta={"line": True, "style": "--", "color": "black"}))
    return [diagram, edge, loss]
