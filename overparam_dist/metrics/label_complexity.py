r"""Label complexity (Arora, Du, Hu, Li & Wang 2019, "Fine-Grained Analysis of Optimization and Generalization
for Overparameterized Two-Layer Neural Networks"): sqrt(2 y^T (H^inf)^{-1} y / n), the quantity their
generalization bound grows with. Labels a kernel finds easy (true labels) give a small value, random ones a
large value.

With C outputs the net is trained on an n x C target matrix Y (one-hot for class labels, as the squared loss in
train.py sees them; the regression targets otherwise), and gradient descent sees the full NTK Theta over all nC
outputs (index i*C + c, as empirical_ntk(outputs="full")). The same bound then reads

    label_complexity = sqrt(2 vec(Y)^T Theta^{-1} vec(Y) / n).

For C = 1 this is Arora et al.'s formula. At infinite width the outputs are independent and identically
distributed, so Theta = K_1 (x) I_C with K_1 = K_trace / C the kernel of one output, and the quadratic form splits:

    vec(Y)^T Theta^{-1} vec(Y) = sum_c y_c^T K_1^{-1} y_c = C * sum_c y_c^T K_trace^{-1} y_c.

Summing y_c^T K_trace^{-1} y_c alone (what a trace kernel suggests) is C times too small inside the root: sqrt(C)
too little. `ntk/label_complexity` takes the exact full Theta_0 at init on the probe set; `ntk/label_complexity_inf`
takes K_inf through the identity above. Both use the ntk/* scale of tracker.py (paper: K / m).
"""

from __future__ import annotations

import math

import torch


def targets(y: torch.Tensor, is_classification: bool, classes: int) -> torch.Tensor:
    """The n x C targets of the bound: one-hot labels, or the regression targets, float64."""
    if is_classification:
        return torch.nn.functional.one_hot(y.long(), classes).double()
    return y.double().reshape(y.shape[0], -1)


def _quadratic(k: torch.Tensor, v: torch.Tensor) -> float:
    """v^T K^{-1} v (v: vectors as columns) by the eigendecomposition; inf when K is singular."""
    evals, evecs = torch.linalg.eigh(k)
    if float(evals[0]) <= 0:
        return math.inf
    return float(((evecs.T @ v).pow(2) / evals[:, None]).sum())


def from_full_kernel(theta: torch.Tensor, y: torch.Tensor) -> float:
    """sqrt(2 vec(Y)^T Theta^{-1} vec(Y) / n), Theta (nC x nC) indexed i*C + c, Y (n x C)."""
    n = y.shape[0]
    return math.sqrt(2 * _quadratic(theta.double(), y.reshape(-1, 1).to(theta.device)) / n)


def from_trace_kernel(k_trace: torch.Tensor, y: torch.Tensor) -> float:
    """The same for Theta = (K_trace / C) (x) I_C (infinite width): sqrt(2 C sum_c y_c^T K_trace^{-1} y_c / n)."""
    n, c = y.shape
    return math.sqrt(2 * c * _quadratic(k_trace.double(), y.to(k_trace.device)) / n)
