r"""The regime a trial trained in, measured and named, so a report never plots a trial outside the regime its
metrics describe as if it were inside it.

The edge ratio. Gradient descent with per-parameter steps lr_p on L = 1/(2n) sum_i |f(x_i) - y_i|^2 moves the
residual by r <- (I - Theta/n) r to first order, Theta = sum_p lr_p J_p J_p^T the step-weighted kernel over all
nC outputs (linearization.gd_kernel). Every mode decays while lr * lambda_max(Theta)/n < 2 (the `edge`; 4 under
cross-entropy, whose Hessian in the logits is at most half the squared loss's: step_size.py).
`regime/edge_ratio` = lambda_max(Theta)/n is logged at step 0 (Theta_0) and at the last row (Theta_T), taken on
the first S = min(n, KERNEL_OUTPUTS // C) training samples: lambda_max(Theta_S)/S estimates lambda_max(Theta)/n
(both are the top eigenvalue of the kernel's integral operator), and is exact when n*C <= KERNEL_OUTPUTS.

The summary's `regime`, by the first rule that applies:
- `diverged`: the loss became non-finite, or the run ended above the loss it started from;
- `dead`: some layer of ReLUs has no unit active on any training sample at the end, or the output is the same for
  every training sample (nothing can train through it: the loss is stuck, whatever the status says);
- `catapult`: the edge ratio at init is at or past the edge, and the loss still ended below its start: the
  linearised dynamics diverge, so the net left its initial kernel to converge (Lewkowycz et al. 2020);
  `regime/loss_rise` says how far the loss rose first;
- `lazy`: the kernel moved less than LAZY_KERNEL_MOVE, |Theta_T - Theta_0|_F / |Theta_0|_F (`regime/kernel_move`);
- `rich`: it moved more, and the loss fell: data about feature learning, not flagged.
`catapult`, `diverged` and `dead` are flagged: reports draw them hollow and leave them out of every fit and verdict
(names.REGIME_FLAGGED).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import names
from .linearization import gd_kernel

KERNEL_OUTPUTS = 2048  # rows of the nC x nC kernel the edge ratio (and train.lr=auto) is taken on
LAZY_KERNEL_MOVE = 0.25  # |Theta_T - Theta_0|_F / |Theta_0|_F below which a trial is lazy
EDGE = {"mse": 2.0, "ce": 4.0}  # the stability edge of the edge ratio, by train.loss (step_size.py derives ce's)


def kernel_samples(n: int, outputs: int) -> int:
    """How many of the first training samples the edge ratio is taken on."""
    return max(1, min(n, KERNEL_OUTPUTS // max(outputs, 1)))


def step_kernel(model: nn.Module, x: torch.Tensor, step_of: dict[str, float], parallel=None) -> torch.Tensor:
    """Theta on x: the full (|x| C)^2 step-weighted kernel, float64."""
    return gd_kernel(model, x, step_of, parallel, outputs="full")


def top_ratio(theta: torch.Tensor, samples: int) -> float:
    """lambda_max(theta) / samples."""
    return float(torch.linalg.eigvalsh(theta)[-1]) / samples


def output_is_constant(out: torch.Tensor) -> bool:
    """The same output for every sample (to float precision relative to its size)."""
    out = out.detach().double().reshape(out.shape[0], -1)
    spread = float((out - out.mean(0)).abs().max()) if out.shape[0] > 1 else 1.0
    return spread <= 1e-7 * max(1.0, float(out.abs().max()))


def classify(*, status: str, loss0: float | None, loss_end: float | None, loss_max: float | None,
             edge0: float | None, kernel_move: float | None, dead: list[str], constant: bool,
             edge: float = EDGE["mse"]) -> tuple[str, str]:
    """(regime, why) by the rules of the module doc; `edge`: the loss's stability edge (EDGE)."""
    if status == "diverged" or loss_end is None or not math.isfinite(loss_end):
        return "diverged", "the loss became non-finite"
    if dead:
        return "dead", f"no ReLU of {', '.join(dead)} is active on any training sample"
    if constant:
        return "dead", "the output is the same for every training sample"
    if loss0 is not None and loss_end > loss0 * (1 + 1e-9):
        return "diverged", f"the loss ended at {loss_end:.3g}, above its initial {loss0:.3g}"
    rise = f"; the loss rose to {loss_max / loss0:.3g} x its initial value first" if loss0 and loss_max else ""
    if edge0 is not None and edge0 >= edge:
        return "catapult", f"edge ratio at init {edge0:.3g} >= {edge:g}, and the loss still fell{rise}"
    below = "edge ratio at init " + (f"{edge0:.3g} < {edge:g}" if edge0 is not None else "not measured")
    if kernel_move is None:
        return "lazy", f"{below} (the kernel's movement was not measured)"
    if kernel_move < LAZY_KERNEL_MOVE:
        return "lazy", f"{below}, kernel moved {kernel_move:.3g} < {LAZY_KERNEL_MOVE}"
    return "rich", f"the kernel moved {kernel_move:.3g} >= {LAZY_KERNEL_MOVE} and the loss fell"


class Regime:
    """Built at initialisation, with the model at its init: keeps Theta_0 on the first S samples and follows the
    loss; `end(...)` measures Theta_T and the dead layers and names the regime."""

    def __init__(self, model: nn.Module, x_all: torch.Tensor, outputs: int, step_of: dict[str, float], parallel=None,
                 theta0: torch.Tensor | None = None, loss: str = "mse"):
        """`theta0`: Theta_0 on the same samples when the caller has it already (train.lr=auto computed it)."""
        self.model, self.step_of, self.parallel, self.edge = model, step_of, parallel, EDGE[loss]
        self.x = x_all[:kernel_samples(x_all.shape[0], outputs)]
        self.theta0 = step_kernel(model, self.x, step_of, parallel) if theta0 is None else theta0
        self.edge0 = top_ratio(self.theta0, self.x.shape[0])
        self.loss0: float | None = None
        self.loss_max: float | None = None
        self.edge_end: float | None = None  # measure_end, at the last row
        self.kernel_move: float | None = None

    def see_loss(self, step: int, loss: float) -> None:
        if step == 0:
            self.loss0 = loss
        if math.isfinite(loss):
            self.loss_max = loss if self.loss_max is None else max(self.loss_max, loss)

    def measure_end(self) -> float:
        """The edge ratio of Theta_T (finite weights only), and how far the kernel moved from Theta_0."""
        theta = step_kernel(self.model, self.x, self.step_of, self.parallel)
        self.edge_end = top_ratio(theta, self.x.shape[0])
        norm0 = float(self.theta0.norm())
        self.kernel_move = float((theta - self.theta0).norm()) / norm0 if norm0 > 0 else None
        return self.edge_end

    def summary(self, status: str, loss_end: float | None, dead: list[str], constant: bool) -> dict:
        """The summary fields (names.REGIME*) of a finished run."""
        out: dict = {names.REGIME_EDGE_RATIO_INIT: self.edge0, names.REGIME_EDGE_RATIO: self.edge_end}
        move = self.kernel_move
        out[names.REGIME_KERNEL_MOVE] = move
        out[names.REGIME_LOSS_RISE] = self.loss_max / self.loss0 if self.loss0 and self.loss_max is not None else None
        out[names.REGIME_DEAD_LAYERS] = dead
        out[names.REGIME], out[names.REGIME_WHY] = classify(
            status=status, loss0=self.loss0, loss_end=loss_end, loss_max=self.loss_max, edge0=self.edge0,
            kernel_move=move, dead=dead, constant=constant, edge=self.edge)
        return out

    def state(self) -> dict:
        return {"loss0": self.loss0, "loss_max": self.loss_max}

    def load(self, state: dict) -> None:
        self.loss0, self.loss_max = state.get("loss0"), state.get("loss_max")
