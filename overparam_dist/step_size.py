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


def effective_lrs(base: float, rules: dict, trained: list[str]) -> dict[str, float]:
    """The step of every trained parameter: the base lr times its parameterization's per-layer scale."""
    return {name: base * rules[name].lr_scale for name in trained}


def resolved_at_init(cfg: Config) -> dict:
    """The `derived:` facts of config.yaml that follow from the config and the initial weights alone, computed
    in this process as a trial's rank 0 would (`overparam train --print-config --resolved`). The initial
    weights are the same at any dp and tp (models/init.py), so one unsharded model gives every trial's values."""
    from . import precision
    from .data import build_dataset
    from .metrics.linearization import edge_ratio, lin_gap_off_reason, unstable_reason
    from .models import build_model

    ds = build_dataset(cfg)
    dtype = torch.float64 if cfg.train.dtype == "float64" else torch.float32
    model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=dtype)
    with precision.exact():
        base, lr_facts = resolve_lr(cfg, model, rules, ds.x.to(dtype), ds.num_outputs)
    effective = effective_lrs(base, rules, [n for n, p in model.named_parameters() if p.requires_grad])
    lin_off = lin_gap_off_reason(cfg, len(ds), ds.num_outputs)
    if lin_off is None:  # as the trial decides it (train.py): the closed form needs a stable linearisation
        with precision.exact():
            lin_off = unstable_reason(edge_ratio(model, ds.x.to(dtype), effective))
    return init_facts(cfg, lr_facts, effective, lin_off, ds.info)


def init_facts(cfg: Config, lr_facts: dict, effective_lr: dict, lin_off: str | None, data_info: dict) -> dict:
    """config.yaml's `derived:` facts known at initialisation, spelled once for a trial and for --resolved."""
    return {"train_outer": effective_train_outer(cfg), "lr": lr_facts,
            "lin_gap": {"on": True} if lin_off is None else {"on": False, "why": lin_off},
            "effective_lr": effective_lr, "data": data_info}
