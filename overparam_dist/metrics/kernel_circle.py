r"""The NTK along a circle of inputs: Jacot, Gabriel & Hongler (2018)'s Figure 1, one trial's part of it.

The circle runs through the first training input x_0 and the plane it spans with x_1:

    x(gamma) = r (cos gamma u + sin gamma v),   gamma in [-pi, pi),   r = |x_0|,  u = x_0 / r,
    v = the part of x_1 orthogonal to u, normalised (the next training input, or a unit vector, if x_1 is parallel)

so it lies at the data's norm whatever data.input_norm is. Inputs of any shape are flattened for the geometry and
reshaped back, so every architecture gets a row; K_inf only where it has a closed form (config.kernel_is_known).

The row is Theta(x_0, x(gamma)) on the scale of every ntk/* metric (tracker.py): the trace over the outputs,
sum_c <df_c(x_0)/dtheta, df_c(x(gamma))/dtheta>, times analytic.empirical_scale (1/m for paper, 1 for ntk, 1
elsewhere), which is the scale infinite_width_ntk's K_inf has, so the two are compared as they stand.

The grid is gamma_k = 2 pi (k - floor(N/2)) / N, k = 0..N-1: gamma = 0 is always a point (index N // 2, odd N
too), and that point is x_0 itself, bit for bit, so the row there is the NTK diagonal Theta(x_0, x_0).
The row is that of the Gram of the N circle points (exact NTK code, trial_ntk): N <= ~128 is cheap.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import Config, kernel_is_known
from .analytic import PARAMS as ANALYTIC_PARAMS
from .analytic import empirical_scale, trial_kernel
from .tracker import trial_ntk


def gammas(points: int) -> torch.Tensor:
    """(N,) float64 angles in [-pi, pi) with gamma = 0 at index N // 2."""
    k = torch.arange(points, dtype=torch.float64)
    return 2 * math.pi * (k - points // 2) / points


def circle_inputs(x: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gamma (N,), the circle (N, *x.shape[1:]) in x's dtype and device) through x[0], in the plane of x[0], x[1]."""
    flat = x.detach().reshape(x.shape[0], -1).to(torch.float64)
    x0 = flat[0]
    r = x0.norm()
    if not r > 0:
        raise ValueError("kernel_circle: the first training input has norm 0; no circle runs through it")
    u = x0 / r
    # x_1 normally; a later input or a coordinate axis only when x_1 is (numerically) parallel to x_0
    candidates = [*flat[1:], *torch.eye(flat.shape[1], dtype=torch.float64, device=flat.device)]
    v = None
    for c in candidates:
        w = c - (c @ u) * u
        if w.norm() > 1e-6 * c.norm():
            v = w / w.norm()
            break
    g = gammas(points).to(flat.device)
    circle = r * (torch.cos(g)[:, None] * u + torch.sin(g)[:, None] * v)
    circle = circle.to(x.dtype).reshape(points, *x.shape[1:])
    circle[points // 2] = x[0].detach()  # gamma = 0 is x_0 exactly: its entry is the NTK diagonal at x_0
    return g, circle


def kernel_scale(cfg: Config) -> float:
    """The factor every ntk/* metric puts on the empirical trace NTK (tracker.TheoryMetrics.scale)."""
    return empirical_scale(cfg.model.param, cfg.model.width) if cfg.model.param in ANALYTIC_PARAMS else 1.0


def ntk_row(model: nn.Module, circle: torch.Tensor, scale: float, parallel=None) -> torch.Tensor:
    """Theta(x_0, x(gamma)), (N,) float64: row N // 2 of the circle's scaled trace NTK. A collective under tensor
    parallelism (trial_ntk): every rank calls it."""
    return trial_ntk(model, circle, parallel)[circle.shape[0] // 2] * scale


def infinite_row(circle: torch.Tensor, cfg: Config, classes: int) -> torch.Tensor | None:
    """K_inf(x_0, x(gamma)) on the same scale, or None where K_inf has no closed form."""
    return trial_kernel(cfg, circle, classes)[circle.shape[0] // 2] if kernel_is_known(cfg) else None


def _finite_list(t: torch.Tensor | None) -> list[float] | None:
    """A list for JSON, or None when there is no row or it is not finite (a diverged trial's weights)."""
    if t is None or not bool(torch.isfinite(t).all()):
        return None
    return t.cpu().tolist()


class KernelCircle:
    """Built while the model is at its init (before a checkpoint loads, so a resumed trial recomputes the same init
    row from the seed's initialisation); `record` at the end gives kernel_circle.json's content."""

    def __init__(self, model: nn.Module, x: torch.Tensor, cfg: Config, classes: int, parallel=None):
        self.model, self.parallel = model, parallel
        self.scale = kernel_scale(cfg)
        self.width = cfg.model.width
        self.gamma, self.circle = circle_inputs(x, cfg.metrics.kernel_circle)
        self.init = ntk_row(model, self.circle, self.scale, parallel)
        self.inf = infinite_row(self.circle, cfg, classes)

    def record(self, step: int, diverged: bool = False) -> dict:
        """{"gamma", "init", "end", "inf", "step_end", "width"}; "end" is null for a diverged trial. Every rank
        calls it (the end row is a collective under tensor parallelism)."""
        end = None if diverged else ntk_row(self.model, self.circle, self.scale, self.parallel)
        return {"gamma": self.gamma.tolist(), "init": _finite_list(self.init), "end": _finite_list(end),
                "inf": _finite_list(self.inf), "step_end": int(step), "width": self.width}


__all__ = ["KernelCircle", "circle_inputs", "gammas", "infinite_row", "kernel_scale", "ntk_row"]
