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

and lr_scale = 1 is half the stability edge. Which kernel (`train.lr_kernel`):
- `max` (the default): the larger of two per-sample top eigenvalues, so lr * lambda_max(Theta_0)/n <= lr_scale holds
  for every trial it sets, at every width and with C > 1:
  - Theta_0 itself, the full step-weighted nC x nC kernel at init (exact, sharded like every NTK here), on the
    first S = regime.kernel_samples(n, C) samples: lambda_max(Theta_S)/S estimates lambda_max(Theta)/n (both are
    the top eigenvalue of the kernel's integral operator) and equals it when nC <= regime.KERNEL_OUTPUTS. At
    finite width it may exceed K_inf's: the empirical kernel fluctuates by O(1/sqrt(m)) and its cross-output
    blocks are not 0 (tests/test_step_size.py checks the edge at m = 32, 128, 2048, and with C = 10);
  - K_inf / C of metrics/analytic.py where it is known (fc with `ntk`, or `paper` without biases; the paper kernel is
    already divided by m, as its step is lr/m), on the first min(n, 2048) samples.
- `infinite`: K_inf alone (where known), so every width of a series gets the same step (Lee et al. 2019 share one
  step across widths). Narrow widths may then sit past the edge; their summary says so (regime.py) and reports
  leave them out of every fit.
`train.lr: lambda_min` is Du et al. 2018's step instead: eta = lambda_0 / n^2 for their loss 1/2 sum_i (u_i - y_i)^2,
lambda_0 = lambda_min(H_inf). Our loss is theirs over n, so our lr is n eta: lr = lr_scale * lambda_0 / n with
lambda_0 = lambda_min(K_inf / C) over the whole training set (a subset's lambda_min would be larger, by interlacing),
and their bound (1 - eta lambda_0 / 2)^k reads (1 - lr lambda_0 / (2n))^k. It is far below auto's step: the
theorem's step, for a test of the theorem, not a practical one.
mup: the step is MUP_FRACTION of the above. Its readout starts O(1/m), so Theta_0 holds little more than the
readout's own kernel; as the readout aligns within the first steps the kernel grows about tenfold, and at the full
step every ReLU died within 10 steps (m = 128..2048, depth 1 and 2; tests/test_regime.py keeps that case). At a
fifth the loss falls below half in 100 steps at all six, with no dead layer (tests/test_step_size.py).
Mini-batch SGD uses the same rule: lambda_max(K_B)/B estimates the same operator eigenvalue.
Cross-entropy uses the same rule too: the mean of -log softmax over n has the Hessian (diag(p) - p p^T)/n in
the logits, whose eigenvalues are at most 1/(2n) (the variance of u_Y for a unit u and a one-hot Y is at most
1/2), against 1/n for the squared loss above. So the same step is at most a quarter of cross-entropy's own
stability edge: safe, and about half as fast as the squared loss at its step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import AUTO, LAMBDA_MIN, LR_RULES, Config, ConfigError, effective_train_outer, kernel_is_known
from .metrics.analytic import trial_kernel
from .metrics.regime import kernel_samples, step_kernel, top_ratio

AUTO_SAMPLES = 2048  # samples of the training set K_inf is taken on
MUP_FRACTION = 0.2  # of the kernel step, under model.param=mup (module doc)


def resolve_lr(cfg: Config, model: nn.Module, rules: dict, x: torch.Tensor, outputs: int,
               parallel=None) -> tuple[float, dict, torch.Tensor]:
    """(base lr, the facts recorded under `derived.lr`, Theta_0 of the step-weighted kernel at that lr on the first
    regime.kernel_samples samples, for regime.py). A number in train.lr is used as given."""
    steps = {name: rule.lr_scale for name, rule in rules.items()}
    xs = x[:kernel_samples(x.shape[0], outputs)].detach()
    theta = step_kernel(model, xs, steps, parallel)  # at base lr 1
    lam_init = top_ratio(theta, xs.shape[0])  # per sample
    if cfg.train.lr not in LR_RULES:
        lr = float(cfg.train.lr)
        return lr, {"rule": "given", "lr": lr, "edge_ratio": lr * lam_init}, lr * theta
    if cfg.train.lr == LAMBDA_MIN:
        lam0 = float(torch.linalg.eigvalsh(infinite_kernel(cfg, x, outputs))[0])
        if not lam0 > 0:  # K_inf is singular: two samples coincide (or an input is 0), and the step would be 0
            raise ConfigError(f"train.lr={LAMBDA_MIN}: lambda_min(K_inf) = {lam0:.3g} on the training set (two samples "
                              "coincide or an input is zero): no positive step; use train.lr=auto")
        lr = cfg.train.lr_scale * lam0 / x.shape[0]
        return lr, {"rule": LAMBDA_MIN, "lambda_min_inf": lam0, "samples": int(x.shape[0]),
                    "lr_scale": cfg.train.lr_scale, "lr": lr, "edge_ratio": lr * lam_init}, lr * theta
    facts: dict = {"rule": AUTO, "kernel": cfg.train.lr_kernel, "samples": int(xs.shape[0]),
                   "lambda_max_init": lam_init * xs.shape[0]}
    lam = lam_init
    if kernel_is_known(cfg):
        xi = x[:AUTO_SAMPLES].detach()
        lam_inf = float(torch.linalg.eigvalsh(infinite_kernel(cfg, xi, outputs))[-1]) / xi.shape[0]
        facts.update(samples_inf=int(xi.shape[0]), lambda_max_inf=lam_inf * xi.shape[0])
        lam = lam_inf if cfg.train.lr_kernel == "infinite" else max(lam_inf, lam_init)
        facts["set_by"] = "infinite-width" if lam == lam_inf else "empirical at init"
    else:
        facts["set_by"] = "empirical at init"
    fraction = MUP_FRACTION if cfg.model.param == "mup" else 1.0
    if not lam > 0:  # every input is zero, or no trained parameter moves the output: no kernel to take a step from
        raise ConfigError(f"train.lr={AUTO}: lambda_max of the kernel at init is {lam:.3g} on the training set (are "
                          "all inputs zero?): no step can be taken from it; give train.lr a number")
    lr = cfg.train.lr_scale * fraction / lam
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"train.lr_scale={cfg.train.lr_scale:g}: the step it gives, lr_scale / "
                          f"(lambda_max / n) = {lr:g}, is not a positive finite number")
    facts.update(lr_scale=cfg.train.lr_scale, fraction=fraction, lr=lr, edge_ratio=lr * lam_init)
    return lr, facts, lr * theta


def infinite_kernel(cfg: Config, x: torch.Tensor, outputs: int) -> torch.Tensor:
    """K_inf / C on x, the kernel of one output (float64), for the trial's model."""
    return trial_kernel(cfg, x, outputs).double() / outputs


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
        base, lr_facts, theta = resolve_lr(cfg, model, rules, ds.x.to(dtype), ds.num_outputs)
    effective = effective_lrs(base, rules, [n for n, p in model.named_parameters() if p.requires_grad])
    lin_off = lin_gap_off_reason(cfg, len(ds), ds.num_outputs)
    if lin_off is None:  # as the trial decides it (train.py): the closed form needs a stable linearisation
        with precision.exact():  # from auto's Theta_0 where it covers every sample, as the trial takes it
            ratio = top_ratio(theta, len(ds)) if theta.shape[0] == len(ds) * ds.num_outputs else \
                edge_ratio(model, ds.x.to(dtype), effective)
            lin_off = unstable_reason(ratio)
    return init_facts(cfg, lr_facts, effective, lin_off, ds.info)


def init_facts(cfg: Config, lr_facts: dict, effective_lr: dict, lin_off: str | None, data_info: dict) -> dict:
    """config.yaml's `derived:` facts known at initialisation, spelled once for a trial and for --resolved."""
    return {"train_outer": effective_train_outer(cfg), "lr": lr_facts,
            "lin_gap": {"on": True} if lin_off is None else {"on": False, "why": lin_off},
            "effective_lr": effective_lr, "data": data_info}
