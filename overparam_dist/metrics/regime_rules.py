r"""The rules that name a trial's regime from its measured numbers (regime.py measures them in a trial; reports read
the same constants). Torch-free: plain numbers in, a word and its reason out.

The summary's `regime`, by the first rule that applies:
- `diverged`: the loss became non-finite, or the run ended above the loss it started from;
- `dead`: some layer of ReLUs has no unit active on any training sample at the end, or the output is the same for
  every training sample (nothing can train through it: the loss is stuck, whatever the status says);
- `catapult` (Lewkowycz et al. 2020), the loss ended below its start and either
  - predicted: the edge ratio at init is at or past the edge, so the linearised dynamics diverge and the net left
    its initial kernel to converge, or
  - seen: the loss first rose above its value at init by more than SPIKE (`regime/loss_rise`), and the kernel's
    edge ratio at the end fell by at least KERNEL_DROP of the one at init, and below the edge (lambda_max(K) <
    2n/eta): a lazy run's kernel drifts by far less;
- `edge_of_stability` (Cohen et al. 2021), with metrics.hessian: in the second half of the run (logged rows at
  step >= last step / 2, at least EOS_MIN_ROWS of them) a share of at least EOS_SHARE of the rows has
  hessian/edge_ratio / 2 (the sharpness in units of 2/eta) within EOS_BAND (`regime/eos_share`);
- `rich`: the kernel moved at least LAZY_KERNEL_MOVE, |Theta_T - Theta_0|_F / |Theta_0|_F (`regime/kernel_move`),
  or the features moved Theta(1): feature/delta_rel at the last row (|h(T) - h(0)| / |h(0)| over the trained
  layers' pre-activations on the probe set, features.py) at least RICH_FEATURE_MOVE (`regime/feature_move`);
- `lazy`: otherwise.
`catapult`, `edge_of_stability`, `diverged` and `dead` are flagged: reports draw them hollow and leave them out of
every fit and verdict (names.REGIME_FLAGGED); `rich` is data about feature learning, not flagged.
"""

from __future__ import annotations

import math

LAZY_KERNEL_MOVE = 0.25  # |Theta_T - Theta_0|_F / |Theta_0|_F below which a trial is lazy
EDGE = {"mse": 2.0, "ce": 4.0}  # the stability edge of the edge ratio, by train.loss (step_size.py derives ce's)
SPIKE = 0.01  # a rise of the loss above its value at init by more than this fraction is a spike
KERNEL_DROP = 0.1  # a seen catapult's kernel: its edge ratio fell by at least this fraction of its value at init
HESSIAN_EDGE = 2.0  # gradient descent's edge for hessian/edge_ratio, whatever the loss (a quadratic's stability)
EOS_BAND = (0.8, 1.25)  # the sharpness in units of 2/eta that is "at the edge" (within 25% of 2/eta)
EOS_SHARE = 0.5  # of the second half's sharpness rows in EOS_BAND: the trial trained at the edge of stability
EOS_MIN_ROWS = 4  # second-half sharpness rows below which no edge-of-stability call is made
RICH_FEATURE_MOVE = 0.25  # feature/delta_rel at the end at or above which the features moved Theta(1)


def second_half(points: list[tuple[int, float]], last_step: int) -> list[float]:
    """The values of (step, value) points logged in the second half of a run that ended at `last_step`."""
    return [v for step, v in points if step >= last_step / 2 and math.isfinite(v)]


def eos_share(values: list[float]) -> float | None:
    """The share of sharpness values (hessian/edge_ratio) with edge_ratio / 2 within EOS_BAND; None below
    EOS_MIN_ROWS values."""
    if len(values) < EOS_MIN_ROWS:
        return None
    lo, hi = EOS_BAND
    return sum(lo <= v / HESSIAN_EDGE <= hi for v in values) / len(values)


def classify(*, status: str, loss0: float | None, loss_end: float | None, loss_max: float | None,
             edge0: float | None, kernel_move: float | None, dead: list[str], constant: bool,
             edge: float = EDGE["mse"], edge_end: float | None = None, eos: float | None = None,
             feature_move: float | None = None) -> tuple[str, str]:
    """(regime, why) by the rules of the module doc; `edge`: the loss's stability edge (EDGE); `eos`: eos_share of
    the second half; `feature_move`: feature/delta_rel at the end."""
    if status == "diverged" or loss_end is None or not math.isfinite(loss_end):
        return "diverged", "the loss became non-finite"
    if dead:
        return "dead", f"no ReLU of {', '.join(dead)} is active on any training sample"
    if constant:
        return "dead", "the output is the same for every training sample"
    if loss0 is not None and loss_end > loss0 * (1 + 1e-9):
        return "diverged", f"the loss ended at {loss_end:.3g}, above its initial {loss0:.3g}"
    rise = loss_max / loss0 if loss0 and loss_max is not None else None
    rose = f"; the loss rose to {rise:.3g} x its initial value first" if rise is not None else ""
    if edge0 is not None and edge0 >= edge:
        return "catapult", f"edge ratio at init {edge0:.3g} >= {edge:g}, and the loss still fell{rose}"
    if rise is not None and rise > 1 + SPIKE and edge0 is not None and edge_end is not None \
            and edge_end <= (1 - KERNEL_DROP) * edge0 and edge_end < edge:
        return "catapult", (f"the loss rose to {rise:.3g} x its initial value, then fell, and the kernel's edge ratio "
                            f"fell from {edge0:.3g} to {edge_end:.3g} < {edge:g}")
    if eos is not None and eos >= EOS_SHARE:
        return "edge_of_stability", (f"{eos:.0%} of the second half's sharpness rows lie within "
                                     f"[{EOS_BAND[0]:g}, {EOS_BAND[1]:g}] x 2/eta")
    below = "edge ratio at init " + (f"{edge0:.3g} < {edge:g}" if edge0 is not None else "not measured")
    if feature_move is not None and feature_move >= RICH_FEATURE_MOVE:
        return "rich", f"the features moved {feature_move:.3g} >= {RICH_FEATURE_MOVE} of their size and the loss fell"
    if kernel_move is None:
        return "lazy", f"{below} (the kernel's movement was not measured)"
    if kernel_move < LAZY_KERNEL_MOVE:
        return "lazy", f"{below}, kernel moved {kernel_move:.3g} < {LAZY_KERNEL_MOVE}"
    return "rich", f"the kernel moved {kernel_move:.3g} >= {LAZY_KERNEL_MOVE} and the loss fell"
