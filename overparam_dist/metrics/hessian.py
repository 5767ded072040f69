r"""`metrics.hessian`: the sharpness of the training loss, the top eigenvalue of its Hessian, on every logged row.

L(theta) is the trial's own training loss (objective.py's `loss_fn`: 1/(2n) sum_i |f(x_i) - y_i|^2, or the mean
cross-entropy) over the whole training set, under mini-batch SGD too, as a function of the trained parameters theta
in the coordinates the optimizer updates (the raw tensors: no per-layer step folded in). Logged:

- hessian/lambda_max: lambda_max(H), H = d^2 L / d theta^2, the largest *algebraic* eigenvalue. Away from a minimum H
  has negative eigenvalues too, and one of them may be the largest in magnitude (what power iteration on H would
  find). Lanczos on H itself cannot be drawn there: every Ritz value lies in [lambda_min, lambda_max], and the top one
  rises towards lambda_max from below, so the value logged is a lower bound on lambda_max, within the tolerance.
- hessian/edge_ratio: lambda_max(P^1/2 H P^1/2), P = diag of every parameter's effective step (step_size.effective_lrs:
  train.lr times the parameterization's per-layer scale, so lr is inside P). Gradient descent theta <- theta - P g on
  the local quadratic model is stable while this is < 2: the quantity Cohen et al. (2021)'s "sharpness hovers at
  2/eta" is about when the steps differ by layer (mup). With one step eta for every trained parameter (paper, ntk,
  standard) it is eta * hessian/lambda_max and is computed as that, with no second eigensolve. hessian/lambda_max
  alone compares with 2/eta only under such a uniform step: under paper eta = train.lr / m, not train.lr.
- hessian/lambda_max_gn: lambda_max of the Gauss-Newton part G = J^T H_out J / n (J = df(X)/dtheta, nC x |theta|,
  H_out the per-sample Hessian of the loss in the outputs: I for mse, diag(p) - p p^T for ce, p the softmax). Its
  nonzero eigenvalues are those of H_out^1/2 Theta H_out^1/2 / n, Theta = J J^T the exact full nC x nC NTK of the
  training set over the trained parameters (tracker.trial_ntk, no step weighting), so it is computed from that
  kernel exactly (eigvalsh), where nC <= GN_MAX_OUTPUTS, and not logged above. For mse it is lambda_max(Theta)/n;
  H - G = sum_i r_i . d^2 f(x_i) / n vanishes at an interpolating minimum, where the two agree.
- hessian/unconverged: the Lanczos runs of this row (one, or two with per-layer steps) that stopped at the
  iteration cap before the tolerance (as drift/weight_spec_unconverged): 0 on a trustworthy row.

How. Hessian-vector products by double backward (torch.autograd.grad with create_graph, then the gradient of
<grad L, v>); the first backward's graph is kept for the row's products while the training set is one chunk of
HVP_CHUNK samples, and rebuilt chunk by chunk otherwise. Lanczos with full reorthogonalisation, restarted from its
top Ritz vector every LANCZOS_BASIS vectors (memory: that many float64 copies of theta), warm-started from the
previous row's top vector. It stops when the residual |H y - theta y| = beta_k |s_k| of the top Ritz pair is at most
HESSIAN_TOL times the largest |Ritz value| (an estimate of |H|_2, so a lambda_max near 0 still converges): the error
in lambda_max is then at most that, and about residual^2 / gap. At most HESSIAN_MAX_ITERS products per eigensolve.
The warm-start vectors are not checkpointed: a resumed trial starts from the fixed random vector again, which costs
iterations, not accuracy. Every rank computes the same value on the whole training set with the unwrapped model (no
DDP hook sees these backwards: autograd.grad never accumulates into .grad); tensor parallelism is refused in config.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import names
from .tracker import trial_ntk

HESSIAN_TOL = 1e-4  # residual of the top Ritz pair, relative to the largest |Ritz value| (module doc)
HESSIAN_MAX_ITERS = 200  # Hessian-vector products per eigensolve
LANCZOS_BASIS = 16  # Lanczos vectors before a restart from the top Ritz vector
HVP_CHUNK = 4096  # samples per double backward; one chunk keeps its graph for the whole row
GN_MAX_OUTPUTS = 4096  # nC up to which hessian/lambda_max_gn is computed (an nC x nC float64 kernel)


def _tridiagonal(alpha: list[float], beta: list[float]) -> torch.Tensor:
    t = torch.diag(torch.tensor(alpha, dtype=torch.float64))
    if beta:
        off = torch.tensor(beta, dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    return t


def lanczos_top(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor, tol: float = HESSIAN_TOL,
                max_iters: int = HESSIAN_MAX_ITERS, basis: int = LANCZOS_BASIS) -> tuple[float, torch.Tensor, bool]:
    """(theta, y, converged): the top Ritz pair of the symmetric operator `matvec` (float64 vectors), theta the
    largest algebraic Ritz value, a lower bound on lambda_max; converged False when `max_iters` products ran out
    before the residual reached `tol` (module doc). Non-finite products give (nan, start, True)."""
    q, used = start / start.norm(), 0
    while True:
        k = min(basis, q.numel())
        qs = q.new_empty(k, q.numel())
        qs[0] = q
        alpha: list[float] = []
        beta: list[float] = []
        for j in range(k):
            w = matvec(qs[j])
            used += 1
            if not bool(torch.isfinite(w).all()):
                return math.nan, start, True
            alpha.append(float(qs[j] @ w))
            for _ in range(2):  # full reorthogonalisation, twice ("twice is enough"): no ghost copies
                w = w - qs[:j + 1].T @ (qs[:j + 1] @ w)
            b = float(w.norm())
            evals, evecs = torch.linalg.eigh(_tridiagonal(alpha, beta))
            theta, s = float(evals[-1]), evecs[:, -1].to(q.device)
            scale = float(evals.abs().max())
            residual = b * abs(float(s[-1]))
            done = residual <= tol * scale or b <= 1e-14 * max(scale, 1e-300)  # or an invariant subspace: exact
            if done or used >= max_iters or j + 1 == k:
                y = qs[:j + 1].T @ s
                if done or used >= max_iters:
                    return theta, y, done
                break
            beta.append(b)
            qs[j + 1] = w / b
        q = y / y.norm()  # restart from the top Ritz vector: the next cycle begins at theta and only rises


class LossHvp:
    """v -> H v for the training loss over all of x, H w.r.t. `params`, by double backward (float64 in and out)."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                 loss_fn: Callable, chunk: int = HVP_CHUNK):
        self.model, self.params, self.loss_fn, self.n = model, params, loss_fn, x.shape[0]
        self.parts = list(zip(x.split(chunk), targets.split(chunk)))
        self.kept = self._grads(*self.parts[0]) if len(self.parts) == 1 else None

    def _grads(self, x: torch.Tensor, t: torch.Tensor) -> list[torch.Tensor]:
        """d(share of L)/dtheta on one chunk, with its graph: the chunk's mean loss weighted by its share of n."""
        loss = self.loss_fn(self.model(x), t) * (x.shape[0] / self.n)
        return list(torch.autograd.grad(loss, self.params, create_graph=True))

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        vs = [piece.view_as(p).to(p.dtype) for piece, p in zip(v.split([p.numel() for p in self.params]),
                                                                 self.params)]
        total = torch.zeros_like(v)
        for x, t in self.parts:
            grads = self.kept if self.kept is not None else self._grads(x, t)
            live = [(g, u) for g, u in zip(grads, vs) if g.requires_grad]  # a gradient constant in theta: no term
            if not live:
                continue
            hv = torch.autograd.grad([g for g, _ in live], self.params, [u for _, u in live],
                                     retain_graph=self.kept is not None, allow_unused=True, materialize_grads=True)
            total += torch.cat([h.reshape(-1).to(torch.float64) for h in hv])
        return total


@torch.no_grad()
def _output_hessian_root(logits: torch.Tensor) -> torch.Tensor:
    """(n, C, C): the symmetric square root of diag(p) - p p^T per sample, the cross-entropy Hessian in the logits."""
    p = F.softmax(logits.double(), dim=1)
    h = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    d, u = torch.linalg.eigh(h)
    return u @ torch.diag_embed(d.clamp_min(0).sqrt()) @ u.transpose(1, 2)


def gauss_newton_top(model: nn.Module, x: torch.Tensor, loss: str) -> float:
    """lambda_max(J^T H_out J) / n from the exact full NTK over the model's trainable parameters (module doc)."""
    theta = trial_ntk(model, x, outputs="full")
    n = x.shape[0]
    if loss == "ce":
        with torch.no_grad():
            root = _output_hessian_root(model(x))
        c = root.shape[1]
        theta = torch.einsum("iac,icjd,jdb->iajb", root, theta.view(n, c, n, c), root).reshape(n * c, n * c)
    return float(torch.linalg.eigvalsh(theta)[-1]) / n


class Sharpness:
    """hessian/* of the model as it is when `metrics()` is called. `trained`: name -> trained parameter; `steps`:
    name -> effective step (train.py's effective_lr); `loss`: train.loss, and `loss_fn` the trial's loss on it."""

    def __init__(self, model: nn.Module, trained: dict[str, torch.Tensor], x: torch.Tensor, targets: torch.Tensor,
                 loss_fn: Callable, loss: str, steps: dict[str, float], outputs: int, *, tol: float = HESSIAN_TOL,
                 max_iters: int = HESSIAN_MAX_ITERS, chunk: int = HVP_CHUNK):
        self.model, self.x, self.targets, self.loss_fn, self.loss = model, x, targets, loss_fn, loss
        self.params = list(trained.values())
        self.tol, self.max_iters, self.chunk = tol, max_iters, chunk
        device = self.params[0].device
        distinct = {steps[name] for name in trained}
        self.uniform_step = distinct.pop() if len(distinct) == 1 else None
        self.root_steps = None if self.uniform_step is not None else torch.cat([
            torch.full((p.numel(),), math.sqrt(steps[name]), dtype=torch.float64, device=device)
            for name, p in trained.items()])
        self.with_gn = x.shape[0] * outputs <= GN_MAX_OUTPUTS
        dim = sum(p.numel() for p in self.params)
        # The same start on every rank and in every process; later rows start from the last top vector (this process
        # only: not checkpointed, module doc).
        start = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(device)
        self.vectors = {"raw": start, "stepped": start.clone()}

    def _top(self, key: str, matvec: Callable[[torch.Tensor], torch.Tensor]) -> tuple[float, bool]:
        theta, y, converged = lanczos_top(matvec, self.vectors[key], self.tol, self.max_iters)
        if math.isfinite(theta):
            self.vectors[key] = y
        return theta, converged

    def _eigensolves(self) -> dict[str, float]:
        """The Lanczos part, sharing one kept graph, which is freed on return."""
        hvp = LossHvp(self.model, self.params, self.x, self.targets, self.loss_fn, self.chunk)
        lam, ok = self._top("raw", hvp)
        unconverged = int(not ok)
        if self.uniform_step is not None:
            edge = self.uniform_step * lam
        else:
            r = self.root_steps
            edge, ok = self._top("stepped", lambda v: r * hvp(r * v))
            unconverged += int(not ok)
        return {names.HESSIAN_LAMBDA_MAX: lam, names.HESSIAN_EDGE_RATIO: edge, names.HESSIAN_UNCONVERGED: unconverged}

    def metrics(self) -> dict[str, float]:
        out = self._eigensolves()
        if self.with_gn:
            out[names.HESSIAN_LAMBDA_MAX_GN] = gauss_newton_top(self.model, self.x, self.loss)
        return out
