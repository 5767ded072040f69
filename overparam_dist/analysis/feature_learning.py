"""Yang & Hu 2021's feature learning, measured as mup's coordinate check: how far each ReLU layer's pre-activations
move in the first steps, against the width, under each parameterisation at one fixed step.

Per trial and logged step t, feature/delta_rms/<layer> is the RMS coordinate of h_l(t) - h_l(0) on the probe set
(metrics/features.py). Per parameterisation, layer and seed, the slope of log feature/delta_rms/<layer> at the last
step against log width (least squares over the widths that trained); the verdicts (verdicts.width_law, intervals
over seeds) are per layer and combined over the layers (verdicts.combine):
- ntk: the change falls as m^-1/2 (the interval excludes 0 and meets -0.5 +- SLOPE_TOL);
- mup: it stays Theta(1) (exponent 0: the interval within +-SLOPE_TOL of 0, which also contains 0);
- standard at a fixed step: the step's edge ratio at init, lr·lambda_max(Theta_0)/n (regime/edge_ratio_init, 2 is
  the edge of stability), grows as m^1 (the kernel grows with the width), so a fixed step blows up at some width or
  must shrink as 1/m: width_law with exponent 1 over the trials that trained, or supported outright where every
  trial at the widest width diverged and none at the narrowest. The features' own
  slopes are reported beside it, not judged: at steps that stay stable they depend on the layer.
Trials that diverged have no slope (their features are not finite); they are counted for the standard claim.
"""

from __future__ import annotations

import math

from ..metrics import names
from .plots import Panel, Series, from_seeds
from .results import SweepResults, Trial, number
from .verdicts import INCONCLUSIVE, SUPPORTED, Finding, Verdict, combine, width_law

PARAM = "model.param"
CLAIMED = {"ntk": -0.5, "mup": 0.0}  # the exponent of the change's coordinate size in the width


def _param(t: Trial) -> str:
    return str(t.row.get(PARAM) or "")


def layers(trials: list[Trial]) -> list[str]:
    """The ReLU layers with feature/delta_rms/<layer> in the trials' last rows, in the model's order."""
    prefix = names.FEATURE_DELTA_RMS + "/"
    found = {k[len(prefix):] for t in trials for k in (t.history[-1] if t.history else {}) if k.startswith(prefix)}
    return sorted(found, key=lambda name: (name != "input", int(name.rsplit(".", 1)[-1]) if "." in name else 0))


def final_sizes(trials: list[Trial], layer: str) -> dict[int, list[tuple[float, float]]]:
    """seed -> [(width, feature/delta_rms/<layer> at the last logged step)] over trials that did not diverge."""
    out: dict[int, list[tuple[float, float]]] = {}
    for t in trials:
        if t.status != "completed" or t.width is None:
            continue
        _, ys = t.curve(names.feature_delta_rms(layer))
        if ys and ys[-1] > 0:
            out.setdefault(t.seed, []).append((float(t.width), ys[-1]))
    return out


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log y on log x; None below two distinct widths."""
    if len({x for x, _ in points}) < 2:
        return None
    lx = [math.log(x) for x, _ in points]
    ly = [math.log(y) for _, y in points]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def _slopes(trials: list[Trial], layer: str) -> dict[int, float]:
    return {seed: s for seed, pts in final_sizes(trials, layer).items() if (s := slope(pts)) is not None}


def feature_findings(res: SweepResults) -> tuple[list[Finding], list[Panel]]:
    trials = res.usable()
    by_param = {p: [t for t in trials if _param(t) == p] for p in ("standard", "ntk", "mup")}
    layer_names = layers(trials)
    found = []
    for param, exponent in CLAIMED.items():
        per_layer = {layer: width_law(_slopes(by_param[param], layer), exponent) for layer in layer_names}
        word = combine(list(per_layer.values())) if per_layer else INCONCLUSIVE
        law = "m^-1/2" if exponent else "Θ(1): m^0"
        found.append(Finding(f"{param}: the change of each layer's features (RMS coordinate at the last step) in the "
                             "width", f"{law} ± 0.2", "; ".join(f"{k}: {v.text()}" for k, v in per_layer.items()),
                             Verdict(word, f"{word} in {sum(v.word == word for v in per_layer.values())} of "
                                     f"{len(per_layer)} layers"),
                             {k: {"estimate": v.estimate, "ci95": v.ci95, "word": v.word} for k, v in
                              per_layer.items()}))
    found.append(_standard(by_param["standard"], layer_names))
    return found, _panels(by_param, layer_names)


def _standard(trials: list[Trial], layer_names: list[str]) -> Finding:
    """Standard at a fixed step: the step's edge ratio at init grows as m, so the step must shrink as 1/m to stay
    stable, or training diverges (module doc). The features' slopes are reported beside it."""
    diverged = sorted({t.width for t in trials if t.status == "diverged" and t.width is not None})
    widths = sorted({t.width for t in trials if t.width is not None})
    # Divergence speaks for the claim only as an upper tail: every trial at the widest width diverged, none at the
    # narrowest (one unlucky seed at a small width says nothing about the width)
    blown = bool(widths) and len(widths) > 1 and all(
        t.status == "diverged" for t in trials if t.width == widths[-1]) and not any(
        t.status == "diverged" for t in trials if t.width == widths[0])
    per_seed: dict[int, list[tuple[float, float]]] = {}
    for t in trials:
        v = number(t.row.get(names.REGIME_EDGE_RATIO_INIT))
        if t.width and v is not None and v > 0:
            per_seed.setdefault(t.seed, []).append((float(t.width), v))
    edge = width_law({s: e for s, pts in per_seed.items() if (e := slope(pts)) is not None}, 1.0)
    features = {layer: width_law(_slopes(trials, layer), 0.0) for layer in layer_names}
    measured = f"lr·λ_max(Θ_0)/n ∝ m^{edge.text()}; features: " + ", ".join(
        f"{k} m^{v.estimate:.2f}" for k, v in features.items() if v.estimate is not None)
    if diverged:
        measured += f"; diverged at m = {', '.join(map(str, diverged))}"
    verdict = Verdict(SUPPORTED, f"every trial at m = {widths[-1]} diverged at this step, none at m = {widths[0]}") \
        if blown else edge
    return Finding("standard at a fixed step: lr·λ_max(Θ_0)/n (the step's edge ratio, 2 = unstable) in the width",
                   "blows up with width (∝ m), or the step must shrink as 1/m", measured, verdict,
                   {"diverged_widths": diverged, "edge_slope": edge.estimate, "edge_ci95": edge.ci95,
                    "features": {k: v.estimate for k, v in features.items()}})


def _panels(by_param: dict[str, list[Trial]], layer_names: list[str]) -> list[Panel]:
    """mup's coordinate-check layout: one panel per parameterisation, the last ReLU layer's change against width, one
    line per logged step (mean over seeds with its interval)."""
    layer = layer_names[-1] if layer_names else None
    panels = []
    for param, trials in by_param.items():
        if not trials or layer is None:
            continue
        panel = Panel(title=f"{param}: |h(t) − h(0)| RMS coordinate, layer {layer}", xlabel="width m",
                      ylabel=f"feature/delta_rms/{layer}", xlog=True, ylog=True)
        key = names.feature_delta_rms(layer)
        steps = sorted({s for t in trials for s in t.curve(key)[0] if s > 0})
        for step in steps:
            per_seed: dict[int, list[tuple[float, float]]] = {}
            for t in trials:
                xs, ys = t.curve(key)
                if t.status == "completed" and t.width and step in xs and ys[xs.index(step)] > 0:
                    per_seed.setdefault(t.seed, []).append((float(t.width), ys[xs.index(step)]))
            if per_seed:
                panel.series.append(from_seeds(f"t = {step}", per_seed))
        if param in CLAIMED and panel.series:
            top = panel.series[-1]
            x0, y0 = top.x[0], top.y[0]
            panel.references.append(Series(f"the claim: slope {CLAIMED[param]:g}", [x0, top.x[-1]],
                                      [y0, y0 * (top.x[-1] / x0) ** CLAIMED[param]]))
        panels.append(panel)
    return panels
