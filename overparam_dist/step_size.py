r"""`train.lr: auto`: the step size from the kernel gradient descent sees, so a trial stays in the regime its
metrics describe.

The loss is L(theta) = 1/(2n) sum_i |f(x_i) - y_i|^2 and every trained parameter p moves by
-lr * s_p * dL/dp, with s_p the parameterization's per-layer scale (models/init.py; paper: 1/m). Linearised
around theta, the residual r in R^{nC} moves as

    r <- (I - lr/n * Theta) r,        Theta = sum_p s_p J_p J_p^T     (J_p = df(X)/dp, nC x |p|),

which is stable only while lr * lambda_max(Theta) / n < 2. At initialisation the C outputs are independent and
identically distributed, so as m -> infinity Theta = K (x) I_C, where K = K_trace / C is the kernel of one output
and K_trace the trace NTK of metrics/ (sum over outputs). Hence

    train.lr = train.lr_scale * n / lambda_max(K),   K = K_trace / C,

and lr_scale = 1 is half the stability edge. Which K:
- `infinite-width`: fc with `ntk` (biases or not) or `paper` (no biases): K_inf of metrics/analytic.py (the paper
  kernel is already divided by m, as its step is lr/m). Every width of a sweep cell then gets the same lr.
- `empirical at init`: every other model. Theta_trace = sum over parameter groups of equal s_p of
  s_p * K_trace(group) at init (exact, sharded like every NTK here), divided by C; at finite width the
  cross-output blocks are O(1/sqrt(m)), so lambda_max(Theta) is lambda_max(Theta_trace)/C up to that.
- Either is taken on the first min(n, 2048) training samples S: lambda_max(K_S)/|S| estimates
  lambda_max(K)/n (both are the top eigenvalue of the kernel's integral operator), and equals it when n <= 2048.
Mini-batch SGD uses the same rule: lambda_max(K_B)/B estimates the same operator eigenvalue.
Cross-entropy uses the same rule too: the mean of -log softmax over n has the Hessian (diag(p) - p p^T)/n in
the logits, whose eigenvalues are at most 1/(2n) (the variance of u_Y for a unit u and a one-hot Y is at most
1/2), against 1/n for the squared loss above. So the same step is at most a quarter of cross-entropy's own
stability edge: safe, and about half as fast as the squared loss at its step.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import AUTO, Config, effective_train_outer
from .metrics.analytic import PARAMS as ANALYTIC_PARAMS
from .metrics.analytic import infinite_width_ntk
from .metrics.linearization import gd_kernel

AUTO_SAMPLES = 2048  # samples of the training set the kernel is taken on


def kernel_is_known(cfg: Config) -> bool:
    m = cfg.model
    return m.arch == "fc" and m.param in ANALYTIC_PARAMS and not (m.bias and m.param == "paper")


def resolve_lr(cfg: Config, model: nn.Module, rules: dict, x: torch.Tensor, outputs: int,
               parallel=None) -> tuple[float, dict]:
    """(base lr, the facts recorded under `derived.lr`). A number in train.lr is returned as given."""
    if cfg.train.lr != AUTO:
        return float(cfg.train.lr), {"rule": "given", "lr": float(cfg.train.lr)}
    xs = x[:AUTO_SAMPLES].detach()
    if kernel_is_known(cfg):
        kernel = "infinite-width"
        k = infinite_width_ntk(xs.flatten(1), cfg.model.depth, cfg.model.param, bias=cfg.model.bias,
                               train_outer=effective_train_outer(cfg), classes=outputs)
    else:
        kernel = "empirical at init"
        k = gd_kernel(model, xs, {name: rule.lr_scale for name, rule in rules.items()}, parallel)
    lam = float(torch.linalg.eigvalsh(k.double() / outputs)[-1])
    lr = cfg.train.lr_scale * xs.shape[0] / lam
    return lr, {"rule": AUTO, "kernel": kernel, "samples": int(xs.shape[0]), "lambda_max": lam,
                "lr_scale": cfg.train.lr_scale, "lr": lr}
