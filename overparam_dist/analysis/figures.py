"""The report's figure set: which figures a sweep gets, their theory reference lines (theory.py), and the footer
each carries (provenance.py)."""

from __future__ import annotations

from ..metrics import names
from . import theory
from .plots import FigureData, against_width, critical_width, loss_curves, mean_series, steps_to_fit
from .provenance import sweep_footer
from .repro import check
from .results import SweepResults, number


def sweep_param(res: SweepResults) -> str | None:
    """The trials' parameterization, or None when they mix several (no reference line then fits them all)."""
    params = {t.row.get("model.param") or "paper" for t in res.trials}
    return params.pop() if len(params) == 1 else None


def trains_square_layers(res: SweepResults) -> bool | None:
    """Whether the trials train m x m layers (depth >= 1 and not model.train_input_only); None when they differ."""
    kinds = {(number(t.row.get("model.depth")) or 0) >= 1 and str(t.row.get("model.train_input_only")) != "True"
             for t in res.trials}
    return kinds.pop() if len(kinds) == 1 else None


def _with_theory(res: SweepResults, key: str, param: str | None, caption: str, **kw) -> FigureData:
    """against_width with the theory's reference line where it applies to `param` (theory.py), said in the
    caption and the subtitle either way."""
    slope, why = theory.reference(key, param, trains_square_layers(res))
    label = f"theory: {theory.law_text(key, slope)}" if slope is not None else ""
    return against_width(res, key, reference=slope, reference_label=label, subtitle=why, caption=f"{caption} {why}",
                         **kw)


ALONG_WIDTH = ("log-log, one series per depth (mean over seeds, bars: its 95% interval over seeds (Student t; none "
               "from one seed), faint dots = each seed, dotted = fitted power law); legend: fitted slope with its 95% "
               "interval over seeds.")


def figures(res: SweepResults, commit: str | None = None, checked: tuple | None = None) -> list[FigureData]:
    """Every figure of the report, as data (not drawn yet), each with its footer (`commit`: the code's git hash,
    found from the checkout when None). `checked`: repro.check(res) when the caller has it already."""
    param = sweep_param(res)
    lam = against_width(
        res, names.NTK_LAMBDA_MIN, name="ntk_lambda_min", title="Smallest NTK eigenvalue against width",
        subtitle="solid: end of training; dashed: at initialisation; dotted: the infinite-width kernel K∞", fit=False,
        init_too=True,
        caption="ntk/lambda_min of the empirical NTK on the probe set at the end of training (solid) and at "
                "initialisation (dashed), against width, and of the infinite-width kernel K∞ where it is known "
                "(dotted, ntk/lambda_min_inf); means over seeds with their 95% intervals over seeds (bars) and each "
                "seed (faint dots). The convergence theory needs it bounded away from 0 as m grows; with "
                "width the empirical value should settle at K∞'s and move less during training.")
    for skey, trials in res.by_series().items():
        inf = mean_series(res, skey, trials, names.NTK_LAMBDA_MIN_INF, positive=False)
        if inf.x:
            inf.label = f"{inf.label} (K∞)"
            inf.meta["infinite_width"] = True
            lam.panels[0].extra.append(inf)
    figs = [
        loss_curves(res),
        _with_theory(res, names.DRIFT_WEIGHT_ABS, param, name="drift_weight_abs",
                     title="Weight drift ‖θ_t − θ_0‖_F against width",
                     caption=f"drift/weight_abs, the distance the trained weights moved from initialisation, at the "
                             f"end of training, against width; {ALONG_WIDTH}"),
        _with_theory(res, names.DRIFT_WEIGHT_REL, param, name="drift_weight_rel",
                     title="Relative weight drift ‖θ_t − θ_0‖_F / ‖θ_0‖_F against width",
                     caption=f"drift/weight_rel, the relative Frobenius drift over the trained parameters, against "
                             f"width; {ALONG_WIDTH}"),
        _with_theory(res, names.NTK_REL_DRIFT, param, name="ntk_rel_drift",
                     title="NTK drift ‖K_t − K_0‖_F / ‖K_0‖_F against width",
                     caption=f"ntk/rel_drift, how far the empirical NTK on the probe set moved from its initial value, "
                             f"at the end of training, against width; {ALONG_WIDTH}"),
        _with_theory(res, names.NTK_INIT_GAP, param, name="ntk_init_gap",
                     title="Distance of K_0 from the infinite-width kernel against width",
                     caption=f"ntk/init_gap = ‖K_0 − K∞‖_F / ‖K∞‖_F on the probe set at initialisation (fc with "
                             f"paper or ntk only), against width; {ALONG_WIDTH}"),
        lam,
        against_width(
            res, names.DRIFT_ACT_FLIP, name="act_flips", title="ReLU activation flips against width",
            subtitle="fraction of (probe sample, unit) ReLU signs of trained layers that differ from init",
            caption="drift/act_flip: the fraction of (probe sample, unit) ReLU signs of the trained layers that "
                    "differ from initialisation at the end of training, against width; one series per depth (mean over "
                    "seeds, bars: its 95% interval over seeds, faint dots = each seed) with fitted slopes (95% "
                    "intervals over seeds). Fewer flips = closer to the linearised (NTK) regime. "
                    "No reference line: the theory bounds the flips, it gives no exponent."),
        _with_theory(res, names.NTK_LIN_GAP, param, name="ntk_lin_gap",
                     title="Distance to the linearised model |r_t − r_t^lin| / |r_0| against width",
                     caption=f"ntk/lin_gap: how far the trained net's training residual is from that of its "
                             f"linearisation around init trained by the same GD (Lee et al. 2019), at the end of "
                             f"training, against width; {ALONG_WIDTH}"),
        _with_theory(res, names.DRIFT_NEURON_MAX, param, name="drift_neuron_max",
                     title="Largest per-neuron distance from init max_r |w_r(t) − w_r(0)| against width",
                     caption=f"drift/neuron_max: the largest distance any unit's incoming weights moved from init "
                             f"(Du et al. 2018), at the end of training, against width; {ALONG_WIDTH}"),
        steps_to_fit(res),
    ]
    # A metric no trial logged (ntk/lin_gap needs mse and full batches) gets no empty figure.
    figs = [f for f in figs if not f.name.startswith(("ntk_lin_gap", "drift_neuron_max"))
            or any(s.x for s in f.panels[0].series)]
    # K_inf is known only for fc paper / ntk: elsewhere there is no gap to draw, and no empty figure is made.
    figs = [f for f in figs if f.name != "ntk_init_gap" or any(s.x for s in f.panels[0].series)]
    cw = critical_width(res)
    if cw is not None:
        figs.append(cw)
    claim = (checked or check(res))[1]
    if claim is not None:
        claim.caption += (" Where a point is a mean over seeds: bars = its 95% interval over seeds (Student t; none "
                          "from one seed), faint dots = each seed.")
        figs.insert(0, claim)
    footer = sweep_footer(res, commit)
    for f in figs:
        f.footer = footer
    return figs
