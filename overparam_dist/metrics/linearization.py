r"""`ntk/lin_gap`: how far the trained net is from its linearisation around initialisation (Lee et al. 2019,
"Wide Neural Networks of Any Depth Evolve as Linear Models Under Gradient Descent").

The linearised model f_lin(theta) = f(theta_0) + J_0 (theta - theta_0), trained by the same full-batch gradient
descent on L = 1/(2n) sum_i |f(x_i) - y_i|^2 with per-parameter step lr_p (train.py), has the residual
r = f_lin(X) - Y in R^{nC} (index i*C + c) evolve exactly as

    r_{t+1} = r_t - (1/n) Theta_0 r_t,      Theta_0 = sum_p lr_p J_{0,p} J_{0,p}^T      (nC x nC),

so r_t^lin = (I - Theta_0 / n)^t r_0. With Theta_0 = V diag(lambda) V^T (one eigendecomposition at init),
r_t^lin = r_0 + V (((1 - lambda/n)^t - 1) * (V^T r_0)): O((nC)^2) per logged row. The metric is

    ntk/lin_gap = |r_t - r_t^lin| / |r_0|,

0 at step 0 by construction, and ntk/lin_loss = |r_t^lin|^2 / (2n), the loss the linearised model predicts:
Arora et al. (2019)'s eigen-projection sum_i (1 - lambda_i/n)^(2t) (v_i^T r_0)^2 / (2n), here from the empirical
Theta_0 and r_0 = f_0(X) - Y (the paper takes K_inf and f_0 = 0, assuming a vanishing output at init).
On held-out samples X* (data.test_n) the linearised model trained the same way predicts

    f_t^lin(X*) = f_0(X*) - (1/n) Theta_0(X*, X) sum_{s<t} r_s^lin
                = f_0(X*) - (1/n) Theta_0(X*, X) V (g_t(lambda) * (V^T r_0)),   g_t(l) = (1 - (1 - l/n)^t) / (l/n)

(g_t(0) = t), Theta_0(X*, X) = sum_p lr_p J_{0,p}(X*) J_{0,p}(X)^T, and ntk/test_lin_gap = |f_t(X*) - f_t^lin(X*)| /
|f_0(X*) - Y*|. Theta_0 is the exact empirical NTK over all nC outputs (tracker.trial_ntk, sharded
like every NTK here). It is on for the squared loss with full batches and n*C <= metrics.lin_max (the kernel is
(nC)^2 floats and its eigendecomposition (nC)^3 flops); otherwise off, and config.yaml's `derived.lin_gap` says why.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import Config
from . import names
from .tracker import trial_ntk


def lin_gap_off_reason(cfg: Config, n: int, outputs: int) -> str | None:
    """Why ntk/lin_gap is off for this trial, or None when it is on."""
    if not cfg.metrics.ntk:
        return "metrics.ntk=false"
    if cfg.train.loss != "mse":
        return "train.loss is not mse: the linearised residual has a closed form only for the squared loss"
    if cfg.train.batch_size not in (0, n):
        return "mini-batch SGD: the closed form is for full-batch gradient descent"
    if n * outputs > cfg.metrics.lin_max:
        return f"data.n x outputs = {n * outputs} > metrics.lin_max = {cfg.metrics.lin_max}"
    return None


def gd_kernel(model: nn.Module, x: torch.Tensor, step_of: dict[str, float], parallel=None,
              outputs: str = "trace") -> torch.Tensor:
    """sum over groups of parameters with the same step s of s * NTK(group): the kernel gradient descent with
    per-parameter steps `step_of` (name -> step) sees. Float64."""
    groups: dict[float, list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(step_of[name], []).append(p)
    return sum(step * trial_ntk(model, x, parallel, ps, outputs=outputs) for step, ps in groups.items())


def edge_ratio(model: nn.Module, x: torch.Tensor, step_of: dict[str, float], parallel=None) -> float:
    """lr * lambda_max(Theta_0) / n of the full step-weighted GD kernel (each parameter's own step in it)."""
    theta = gd_kernel(model, x, step_of, parallel, outputs="full")
    return float(torch.linalg.eigh(theta).eigenvalues[-1]) / x.shape[0]  # as LinearizationGap: the same bits


def unstable_reason(ratio: float) -> str | None:
    """Why the linearised model predicts nothing at this edge ratio (None below 2, where every mode decays)."""
    if ratio < 2:
        return None
    return (f"the linearised dynamics are unstable: lr * lambda_max(Theta_0) / n = {ratio:.3g} >= 2 "
            "(Theta_0 the step-weighted kernel at init), so the linear model's residual grows without bound")


class LinearizationGap:
    """Built at initialisation (before any update or checkpoint load); `gap(step)` at any later row.
    `unstable_reason(gap.edge_ratio)` says why the closed form predicts nothing for this trial (None when it does)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, targets: torch.Tensor, step_of: dict[str, float],
                 parallel=None, x_test: torch.Tensor | None = None, test_targets: torch.Tensor | None = None,
                 theta: torch.Tensor | None = None):
        """`theta`: Theta_0 on all of x, where the caller has it already (train.lr=auto took it; no held-out set)."""
        self.model, self.x, self.n = model, x, x.shape[0]
        self.y = targets.double().reshape(self.n, -1)
        self.x_test = x_test
        if x_test is None:
            theta = gd_kernel(model, x, step_of, parallel, outputs="full") if theta is None else theta
        else:  # one kernel over train and test: its train block, and the test x train block
            both = gd_kernel(model, torch.cat([x, x_test]), step_of, parallel, outputs="full")
            rows = self.n * self.y.shape[1]
            theta, cross = both[:rows, :rows], both[rows:, :rows]
        self.evals, self.evecs = torch.linalg.eigh(theta)
        # theta holds each parameter's own step, so the residual's mode i moves by 1 - lambda_i/n per step: the
        # linearised model converges only while lambda_max/n < 2 (lambda_i >= 0). Past that its top mode grows
        # geometrically and a "gap" measures the blow-up of the linearisation, not the net's distance from it.
        self.edge_ratio = float(self.evals[-1]) / self.n
        self.r0 = self._residual()
        self.r0_norm = float(self.r0.norm())
        self.c0 = self.evecs.T @ self.r0
        if x_test is not None:
            self.cross_v = cross @ self.evecs
            self.f0_test = self._outputs(x_test)
            r0_test = self.f0_test - test_targets.double().reshape(-1).to(self.f0_test.device)
            self.r0_test_norm = float(r0_test.norm())

    @torch.no_grad()
    def _outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).double().reshape(-1)

    def linear_test_outputs(self, step: int) -> torch.Tensor:
        """f_step^lin(X*), flattened as the net's outputs are (module doc)."""
        rate = self.evals / self.n
        small = rate.abs() < 1e-12
        g = torch.where(small, torch.full_like(rate, float(step)),
                        (1 - (1 - rate) ** step) / torch.where(small, torch.ones_like(rate), rate))
        return self.f0_test - self.cross_v @ (g * self.c0) / self.n

    @torch.no_grad()
    def _residual(self) -> torch.Tensor:
        return (self.model(self.x).double() - self.y.to(self.x.device)).reshape(-1)

    def linear_residual(self, step: int) -> torch.Tensor:
        """r_step^lin, as r_0 plus the change (exactly r_0 at step 0, free of the eigenbasis' rounding)."""
        return self.r0 + self.evecs @ (self.c0 * ((1 - self.evals / self.n) ** step - 1))

    def metrics(self, step: int) -> dict[str, float]:
        """ntk/lin_gap and ntk/lin_loss = 1/(2n) |r_step^lin|^2, the squared loss of train.py on the linearised
        model: the eigen-projection prediction sum_i (1 - lambda_i/n)^(2 step) (v_i^T r_0)^2 / (2n)."""
        r_lin = self.linear_residual(step)
        gap = float((self._residual() - r_lin).norm()) / self.r0_norm if self.r0_norm > 0 else 0.0
        out = {names.NTK_LIN_GAP: gap, names.NTK_LIN_LOSS: 0.5 * float(r_lin.square().sum()) / self.n}
        if self.x_test is not None:
            diff = float((self._outputs(self.x_test) - self.linear_test_outputs(step)).norm())
            out[names.NTK_TEST_LIN_GAP] = diff / self.r0_test_norm if self.r0_test_norm > 0 else 0.0
        return out
