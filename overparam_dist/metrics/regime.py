r"""The regime a trial trained in, measured and named, so a report never plots a trial outside the regime its
metrics describe as if it were inside it.

The edge ratio. Gradient descent with per-parameter steps lr_p on L = 1/(2n) sum_i |f(x_i) - y_i|^2 moves the
residual by r <- (I - Theta/n) r to first order, Theta = sum_p lr_p J_p J_p^T the step-weighted kernel over all
nC outputs (linearization.gd_kernel). Every mode decays while lr * lambda_max(Theta)/n < 2 (the `edge`; 4 under
cross-entropy, whose Hessian in the logits is at most half the squared loss's: step_size.py).
`regime/edge_ratio` = lambda_max(Theta)/n is logged at step 0 (Theta_0) and at the last row (Theta_T), taken on
the first S = min(n, KERNEL_OUTPUTS // C) training samples: lambda_max(Theta_S)/S estimates lambda_max(Theta)/n
(both are the top eigenvalue of the kernel's integral operator), and is exact when n*C <= KERNEL_OUTPUTS.

The summary's `regime` is named by regime_rules.py's rules (torch-free, so reports read the same constants).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import names
from .linearization import gd_kernel
from .regime_rules import EDGE, classify, eos_share, second_half

KERNEL_OUTPUTS = 2048  # rows of the nC x nC kernel the edge ratio (and train.lr=auto) is taken on


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
        self.sharpness: list[tuple[int, float]] = []  # (step, hessian/edge_ratio) of every logged row
        self.feature_move: float | None = None  # feature/delta_rel of the last logged row

    def see_loss(self, step: int, loss: float) -> None:
        if step == 0:
            self.loss0 = loss
        if math.isfinite(loss):
            self.loss_max = loss if self.loss_max is None else max(self.loss_max, loss)

    def see_row(self, step: int, row: dict) -> None:
        """The logged row's sharpness and feature movement, when measured. A step seen again (resumed from the final
        checkpoint) replaces its row: counted twice it would weigh in the edge-of-stability share twice."""
        while self.sharpness and self.sharpness[-1][0] >= step:
            self.sharpness.pop()
        if (v := row.get(names.HESSIAN_EDGE_RATIO)) is not None:
            self.sharpness.append((step, float(v)))
        if (v := row.get(names.FEATURE_DELTA_REL)) is not None:
            self.feature_move = float(v)

    def measure_end(self) -> float:
        """The edge ratio of Theta_T (finite weights only), and how far the kernel moved from Theta_0."""
        theta = step_kernel(self.model, self.x, self.step_of, self.parallel)
        self.edge_end = top_ratio(theta, self.x.shape[0])
        norm0 = float(self.theta0.norm())
        self.kernel_move = float((theta - self.theta0).norm()) / norm0 if norm0 > 0 else None
        return self.edge_end

    def summary(self, status: str, last_step: int, loss_end: float | None, dead: list[str], constant: bool) -> dict:
        """The summary fields (names.REGIME*) of a run that ended at `last_step`."""
        out: dict = {names.REGIME_EDGE_RATIO_INIT: self.edge0, names.REGIME_EDGE_RATIO: self.edge_end}
        move = self.kernel_move
        out[names.REGIME_KERNEL_MOVE] = move
        out[names.REGIME_LOSS_RISE] = self.loss_max / self.loss0 if self.loss0 and self.loss_max is not None else None
        out[names.REGIME_DEAD_LAYERS] = dead
        eos = eos_share(second_half(self.sharpness, last_step)) if self.sharpness else None
        out[names.REGIME_EOS_SHARE], out[names.REGIME_FEATURE_MOVE] = eos, self.feature_move
        out[names.REGIME], out[names.REGIME_WHY] = classify(
            status=status, loss0=self.loss0, loss_end=loss_end, loss_max=self.loss_max, edge0=self.edge0,
            kernel_move=move, dead=dead, constant=constant, edge=self.edge, edge_end=self.edge_end, eos=eos,
            feature_move=self.feature_move)
        return out

    def state(self) -> dict:
        return {"loss0": self.loss0, "loss_max": self.loss_max, "sharpness": self.sharpness,
                "feature_move": self.feature_move}

    def load(self, state: dict) -> None:
        self.loss0, self.loss_max = state.get("loss0"), state.get("loss_max")
        self.sharpness = [(int(s), float(v)) for s, v in state.get("sharpness", [])]
        self.feature_move = state.get("feature_move")
