"""Where the theory predicts a power law in width, by parameterization: the one table the report's reference
lines, captions and slopes table read, so a line is drawn only where the theory applies to the trials.

paper (weights N(0, 2/m), step lr/m; Allen-Zhu, Li & Song 2018): the weights move O(m^-1/2) in Frobenius and
spectral norm; |theta_0|_F grows like sqrt(m), so the relative Frobenius drift falls like m^-1; the NTK moves
O(m^-1/2) and K_0 is within O(m^-1/2) of K_inf.
ntk (weights N(0, 1) with 1/sqrt(fan_in) multipliers, step lr): the same dynamics in other coordinates
(theta_paper = sqrt(2/m) theta_ntk, and paper's lr/m is ntk's lr/2), so |theta_t - theta_0|_F stays O(1) while
|theta_0|_F grows like m: the relative Frobenius drift again falls like m^-1 (not m^-1/2: measured -0.97 at
widths 128-2048). The NTK moves O(m^-1/2), and K_0 is within O(m^-1/2) of K_inf.
Both relative-drift laws of m^-1 need trained m x m layers. Where none trains (model.depth=0, or
model.train_input_only: Du et al.'s net), the trained weights have a fixed fan-in: |theta_0|_F grows like sqrt(m)
(ntk) or stays O(1) (paper) against a move of O(1) (ntk) or O(m^-1/2) (paper), so the relative drift falls like
m^-1/2 (measured -0.51 [-0.62, -0.39] on Du's net, widths 64-1024).
standard, mup: no width law is claimed here (mup is built to leave the kernel regime): no reference lines.
"""

from __future__ import annotations

from ..metrics import names

# metric -> parameterization -> (exponent of width, why, in a caption's words)
THEORY: dict[str, dict[str, tuple[float, str]]] = {
    names.DRIFT_WEIGHT_ABS: {
        "paper": (-0.5, "under model.param=paper the weights stay within O(m^-1/2) of init (Allen-Zhu et al.)"),
        "ntk": (0.0, "under model.param=ntk ‖θ_t − θ_0‖_F stays O(1): each of the m² weights moves O(1/m)"),
    },
    names.DRIFT_WEIGHT_REL: {
        "paper": (-1.0, "under model.param=paper ‖θ_0‖_F grows like √m, so an O(m^-1/2) move is O(m^-1) of it"),
        "ntk": (-1.0, "under model.param=ntk an O(1) move against ‖θ_0‖_F ∝ m is O(m^-1)"),
    },
    names.NTK_REL_DRIFT: {
        "paper": (-0.5, "the NTK moves O(m^-1/2) in the kernel regime"),
        "ntk": (-0.5, "the NTK moves O(m^-1/2) in the kernel regime"),
    },
    names.NTK_INIT_GAP: {
        "paper": (-0.5, "K_0 is within O(m^-1/2) of the infinite-width kernel"),
        "ntk": (-0.5, "K_0 is within O(m^-1/2) of the infinite-width kernel"),
    },
    names.NTK_LIN_GAP: {
        "paper": (-0.5, "the trained net stays O(m^-1/2) from its linearisation (Lee et al. 2019)"),
        "ntk": (-0.5, "the trained net stays O(m^-1/2) from its linearisation (Lee et al. 2019)"),
    },
    names.DRIFT_NEURON_MAX: {
        "paper": (-1.0, "under model.param=paper a unit's weights move O(m^-1): the ntk law times √(2/m)"),
        "ntk": (-0.5, "under model.param=ntk every unit stays within O(m^-1/2) of init (Du et al. 2018)"),
    },
}


FIXED_FAN_IN = (-0.5, "with no m×m layer trained, the trained weights have a fixed fan-in: an O(m^-1/2) move of each "
                      "unit is O(m^-1/2) of ‖θ_0‖_F")


# Laws the theory states as upper bounds, y = O(m^e) (how far the weights, the kernel and the linearisation move): a
# faster fall is consistent with them (verdicts.width_law(bound=True)). ntk/init_gap is a rate: the CLT's m^-1/2.
BOUNDS = frozenset({names.DRIFT_WEIGHT_ABS, names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT, names.NTK_LIN_GAP,
                    names.DRIFT_NEURON_MAX})


def is_bound(metric: str) -> bool:
    """A law of BOUNDS, or of one layer's share of one (drift/weight_rel/input)."""
    return metric in BOUNDS or metric.rsplit("/", 1)[0] in BOUNDS


def law_text(metric: str, exponent: float) -> str:
    """How a verdict names the law: O(m^e) for a bound, m^e for a rate."""
    return f"O(m^{exponent:g})" if is_bound(metric) else f"m^{exponent:g}"


def reference(metric: str, param: str | None, square_layers: bool | None = True) -> tuple[float | None, str]:
    """(the theory's exponent, a caption sentence saying where it comes from or why there is none). square_layers:
    whether the trials train m x m layers (None: some do and some do not)."""
    if param is None:
        return None, "No reference line: the trials mix parameterizations, and the laws differ between them."
    if metric == names.DRIFT_WEIGHT_REL and param in THEORY[metric] and not square_layers:
        if square_layers is None:
            return None, "No reference line: some trials train m×m layers and some do not, and the laws differ."
        slope, why = FIXED_FAN_IN
        return slope, f"Dashed: the theory's slope {slope:g}: {why}."
    law = THEORY.get(metric, {}).get(param)
    if law is None:
        return None, f"No reference line: no width law for this metric under model.param={param}."
    slope, why = law
    return slope, f"Dashed: the theory's slope {slope:g}: {why}."
