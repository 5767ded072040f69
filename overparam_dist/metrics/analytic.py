r"""Closed-form infinite-width NTK of the fully connected ReLU net in models/fc.py.

Arc-cosine kernel recursion (Cho & Saul 2009; Jacot et al. 2018; Arora et al. 2019), any depth,
for the two parameterizations whose m -> infinity limit is a fixed kernel: ``paper`` and ``ntk``.

Net: h_0 = relu(s_A A x), h_l = relu(s_W W_l h_{l-1}) (+ b_l) for l = 1..L, y = s_B B h_L (+ b_B),
with x in R^d, L = depth hidden m x m layers and C = classes outputs.

* paper: A, W_l ~ N(0, 2/m), B ~ N(0, 1/C), s = 1, no biases; only W_1..W_L trained by default.
* ntk:   A, W_l, B ~ N(0, 1), s_A = sqrt(2/d), s_W = sqrt(2/m), s_B = sqrt(1/m); biases (optional)
         are zero at init with multiplier 1; all layers trained by default.

The kernel compared with is the "trace" NTK K(x, x') = sum_c <dy_c(x)/dtheta, dy_c(x')/dtheta>
over the trained parameters theta.

Recursion. With kappa = 1/d (ntk) or kappa = 1 (paper) let

    S_0(x, x')   = 2 kappa <x, x'>
    theta_l      = arccos( S_l(x, x') / sqrt(S_l(x, x) S_l(x', x')) )            (clamped to [-1, 1])
    S_{l+1}      = sqrt(S_l(x, x) S_l(x', x')) / pi * (sin theta_l + (pi - theta_l) cos theta_l)
    Sdot_l       = (pi - theta_l) / pi                                           l = 0..L
    P_l          = prod_{k=l}^{L} Sdot_k,   P_{L+1} = 1

(S_{l+1} = 2 E[relu(u) relu(v)], Sdot_l = 2 E[relu'(u) relu'(v)], (u, v) ~ N(0, S_l on {x, x'});
the diagonal is preserved: S_l(x, x) = 2 kappa |x|^2 for every l.) S_l is the limit of the per-unit
covariance of the pre-activation of layer l (times m for paper), P_l that of the sum over outputs of
the backprop signals reaching it (divided by C/2 for ntk, by m/2 for paper). The layer-wise NTK of
y = s W a is s^2 (sum_c delta_c . delta_c') (a . a'), of a bias sum_c delta_c . delta_c'. Hence, with
l0 = 0 if the outer layers are trained else 1, t = [train_outer], b = [bias] (model.train_input_only: the l = 0
term alone, t = 0),

    ntk:    K_inf = C/2 * ( sum_{l=l0}^{L} (S_l + b) P_l  +  t (S_{L+1} + 2 b) )         = lim K_emp
    paper:  K_inf = 1/4 * sum_{l=l0}^{L} S_l P_l                                   = lim K_emp / m

For ntk the trace kernel grows like C (every output has unit-variance weights). For paper it does not
depend on C: B ~ N(0, 1/C) makes each output contribute 1/C of the backprop signal. The trained output
layer B contributes only C/2 S_{L+1} = O(1) to the paper kernel, which vanishes after the 1/m scaling
(as for the paper's lr / m step). Multiply the empirical kernel by ``empirical_scale(param, width)``
before comparing.

Inputs of norm zero give relu'(0) = 0 in the network, so Sdot is set to 0 for them.
"""

from __future__ import annotations

import math

import torch

from ..config import ANALYTIC_PARAMS as PARAMS
from ..config import effective_train_outer


def empirical_scale(param: str, width: int) -> float:
    """Factor that maps the empirical trace NTK onto the scale of ``infinite_width_ntk``."""
    if param == "paper":
        return 1.0 / width
    if param == "ntk":
        return 1.0
    raise ValueError(f"no infinite-width NTK for model.param={param!r}: supported are {', '.join(PARAMS)}")


def _relu_step(s: torch.Tensor, diag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S_{l+1}, Sdot_l) from S_l (n x n) and its diagonal."""
    norms = torch.sqrt(diag[:, None] * diag[None, :])
    live = norms > 0
    cos = torch.where(live, s / torch.where(live, norms, torch.ones_like(norms)), torch.zeros_like(s))
    cos = cos.clamp(-1.0, 1.0)
    cos.diagonal().copy_(live.diagonal().to(cos.dtype))  # exactly 1 (arccos is steep there); 0 if |x| = 0
    theta = torch.arccos(cos)
    s_next = norms / math.pi * (torch.sin(theta) + (math.pi - theta) * cos)
    s_dot = torch.where(live, (math.pi - theta) / math.pi, torch.zeros_like(s))
    return s_next, s_dot


def infinite_width_ntk(x: torch.Tensor, depth: int, param: str, *, train_outer: bool | None = None,
                       input_only: bool = False, bias: bool = False, classes: int = 1) -> torch.Tensor:
    """Limit of ``empirical_scale(param, m) * K_emp`` as m -> infinity, (n, n) float64.

    x: (n, d) inputs (any norms; flattened if higher-dimensional). depth: L >= 0 hidden layers.
    train_outer: None = the parameterization's default (paper: False, ntk: True). input_only: only A trains
    (model.train_input_only: the l = 0 term alone; train_outer is then ignored). classes: C outputs.
    """
    if param not in PARAMS:
        raise ValueError(f"no infinite-width NTK for model.param={param!r}: supported are {', '.join(PARAMS)}")
    if depth < 0:
        raise ValueError(f"depth must be >= 0 (number of hidden layers), got {depth}")
    if classes < 1:
        raise ValueError(f"classes must be >= 1, got {classes}")
    if bias and param != "ntk":
        raise ValueError(f"bias=True is supported only for param='ntk', not {param!r} "
                         "(the paper parameterization has no biases)")
    if train_outer is None:
        train_outer = param != "paper"
    if input_only:
        train_outer = False
    if depth == 0 and not (train_outer or input_only):
        raise ValueError("depth=0 with train_outer=False has no trained parameters: the NTK is zero")

    x = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    d = x.shape[1]
    kappa = 1.0 / d if param == "ntk" else 1.0
    s = 2.0 * kappa * (x @ x.T)  # S_0
    diag = s.diagonal().clone()  # preserved by the recursion

    covs = [s]  # S_0..S_{L+1}
    dots = []  # Sdot_0..Sdot_L
    for _ in range(depth + 1):
        s, s_dot = _relu_step(s, diag)
        covs.append(s)
        dots.append(s_dot)

    k = torch.zeros_like(covs[0])
    prod = torch.ones_like(k)  # P_l, built from l = L downwards
    first = 0 if train_outer or input_only else 1
    last = 0 if input_only else depth  # P_0 still takes every layer's Sdot: the signal A gets passes them all
    b = 1.0 if bias else 0.0
    for layer in range(depth, first - 1, -1):
        prod = prod * dots[layer]
        if layer <= last:
            k = k + (covs[layer] + b) * prod
    if param == "paper":
        return k / 4.0
    if train_outer:
        k = k + covs[depth + 1] + 2.0 * b
    return k * (classes / 2.0)


def trial_kernel(cfg, x: torch.Tensor, classes: int) -> torch.Tensor:
    """K_inf of a trial's model (config.Config: its depth, parameterization, biases and trained layers) on x."""
    m = cfg.model
    return infinite_width_ntk(x.detach().flatten(1), m.depth, m.param, train_outer=effective_train_outer(cfg),
                              input_only=m.train_input_only, bias=m.bias, classes=classes)


__all__ = ["empirical_scale", "infinite_width_ntk", "trial_kernel"]
