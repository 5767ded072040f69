"""Weight drift from initialisation: relative Frobenius norms and spectral norms of W_t - W_0.

W_0 is not kept for wide models. Every weight was generated tile by tile from the seed (models/init.py),
so W_0 is regenerated one row block at a time and compared with W_t. We chose this over a low-precision
copy: the drift being measured is small (O(1/sqrt(m)) relative), while a bf16 copy of W_0 carries a
relative error up to 2^-9 per entry - about the size of the drift itself at m = 2^14. Regeneration is
exact (bit-identical W_0), needs one block of extra memory instead of a second model, and works
unchanged on tensor-parallel shards (each rank regenerates only its own block). When a rank's trained
parameters and one more copy of its largest weight fit in the cache budget (`cache_bytes`: a quarter of the memory
the trial leaves free, footprint.w0_cache_budget; W0_CACHE_BYTES where none is given) an exact copy of W_0 is kept
instead, and each weight's D is formed once per row in one shared buffer: the regeneration, which dominates the
metric cost of models that fit, is then paid once per trial.

Spectral norm: subspace (block power) iteration with Rayleigh-Ritz on D^T D (D = W_t - W_0), with
K_SUBSPACE vectors. One pass over row blocks computes D^T (D V) = sum_blocks D_b^T (D_b V) and the Gram
(D V)^T (D V), so each iteration regenerates W_0 once; the first pass also gives ||D||_F. The estimate
sigma_t is a lower bound that rises towards sigma_1 geometrically, like (sigma_{k+1} / sigma_1)^(2t), and V is
warm-started across calls. When D has a flat spectrum (noise-like drift) that ratio is close to 1, and a
"stopped moving" test stops far too early (4 vectors and 4 iterations were 6-9 % low). So the error left is
estimated from the last three iterates as for any linearly converging sequence (Aitken):
rho = d_t / d_{t-1}, error ~ d_t rho / (1 - rho) with d_t = sigma_t - sigma_{t-1}; every row iterates until that
is below `tol` * sigma (1e-3; the final row 1e-5), at most SPECTRAL_MAX_ITERS times. Each pass also gives the top
Ritz pair's residual r = A y - theta y (A = D^T D, A V is what the pass computes): some eigenvalue of A lies within
|r| of theta (Bauer-Fike for a symmetric matrix), so |r| <= 2 tol theta stops too. That is what makes a warm row
cheap: the subspace of the row before is nearly invariant for D a few steps later, and one pass bounds the
eigenvalue nearest theta. It is sigma_1^2 unless sigma_1's direction is (nearly) absent from the subspace, which
a random start makes a measure-zero event, but a warm start from an earlier D may not; theta stays a lower bound
on sigma_1^2 either way, and the final row (`precise`) makes at least two passes, so a direction the warm
subspace missed is amplified once before its residual is trusted. A row where some layer hit the cap says so in
drift/weight_spec_unconverged (metrics/names.py).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import torch

from ..models.init import TILE, Rule, generate_block
from ..parallel.shard_view import ShardView, plain_view
from . import names

K_SUBSPACE = 16  # vectors in the subspace iteration: a wider block converges faster on flat spectra, and each
# pass costs one regeneration of W_0 whatever the block width
SPECTRAL_TOL, SPECTRAL_TOL_FINAL = 1e-3, 1e-5  # relative error left in sigma_1, estimated (see above)
SPECTRAL_MAX_ITERS = 100
# The largest row norm of D that a float32 norm is taken to: far inside (sqrt(tiny), sqrt(max)) of float32
FLOAT32_NORM_RANGE = (1e-15, 1e15)
# The cache budget when the caller gives none; the environment variable overrides every budget (tests).
W0_CACHE_BYTES = 128 * 2**20
W0_CACHE_ENV = "OVERPARAM_W0_CACHE_BYTES"


def layer_name(param_name: str) -> str:
    """'hidden.0.weight' -> 'hidden.0'; biases are reported with their layer's weight."""
    return param_name.rsplit(".", 1)[0]


def _blocks(view: ShardView, rule: Rule, seed: int, name: str, by_rows: bool, w0_local: torch.Tensor | None):
    """Yield (slice, D block) over row blocks (all local columns) or column blocks (all local rows).
    W_0 comes from `w0_local` (the cached local 2-D block) when given, else it is regenerated."""
    w = view.local
    extent = w.shape[0] if by_rows else w.shape[1]
    for s0 in range(0, extent, TILE):
        s1 = min(s0 + TILE, extent)
        if by_rows:
            rows, cols = (view.row0 + s0, view.row0 + s1), (view.col0, view.col0 + w.shape[1])
            local = w[s0:s1]
        else:
            rows, cols = (view.row0, view.row0 + w.shape[0]), (view.col0 + s0, view.col0 + s1)
            local = w[:, s0:s1]
        if w0_local is not None:
            w0 = w0_local[s0:s1] if by_rows else w0_local[:, s0:s1]
        else:
            w0 = generate_block(rule, seed, name, view.global_shape, rows, cols).to(w.device, w.dtype)
        yield slice(s0, s1), local - w0


class _Pass:
    """One regeneration pass over the local block of D = W_t - W_0, giving additive (over ranks) parts of
    ||D||_F^2 and, with an orthonormal basis X (length x k), of one subspace-iteration step.

    side="right": X spans the columns; computes D^T D X and the Gram (D X)^T (D X) over row blocks.
        Correct when every rank holds whole rows (unsharded or row-sharded): D X is complete per block.
    side="left": X spans the rows; computes D D^T X and (D^T X)^T (D^T X) over column blocks (column shards).
    """

    def __init__(self, view: ShardView, rule: Rule, seed: int, name: str, x: torch.Tensor | None, side: str,
                 w0_local: torch.Tensor | None = None, norms: bool = True, d: torch.Tensor | None = None):
        """`norms`: also the squared norms (the first pass of a row; later ones only iterate). `d`: the whole local
        D, when W_0 is cached (one subtraction per row, and one matrix product per pass instead of one per block)."""
        by_rows = side == "right"
        w = view.local
        self.fro_sq = 0.0
        # |row r of D|^2 over the local rows (side="left": partial sums over the local columns): per-unit drift
        self.row_sq = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        self.step = self.gram = None
        if x is not None:
            self.step = torch.zeros(w.shape[1] if by_rows else w.shape[0], x.shape[1], dtype=torch.float64,
                                    device=w.device)
            self.gram = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=w.device)
        xw = x.to(w.dtype) if x is not None else None  # matmuls in the weights' dtype, sums in float64
        blocks = [(slice(0, w.shape[0] if by_rows else w.shape[1]), d)] if d is not None else \
            _blocks(view, rule, seed, name, by_rows, w0_local)
        for sl, d in blocks:
            if norms:
                # In the weights' dtype, squared and summed in float64: D = W_t - W_0 carries that dtype's rounding
                # already, and a float64 norm of a float32 block costs 5x (its conversion). In float64 where that
                # dtype's squares could leave its range: a row near sqrt(max), or every row near sqrt(tiny) or 0.
                norm = torch.linalg.vector_norm(d, dim=1)
                top = float(norm.max()) if norm.numel() else 0.0
                if d.dtype != torch.float64 and not FLOAT32_NORM_RANGE[0] <= top <= FLOAT32_NORM_RANGE[1]:
                    norm = torch.linalg.vector_norm(d, dim=1, dtype=torch.float64)
                sq = norm.double().square()
                if by_rows:
                    self.row_sq[sl] += sq
                else:
                    self.row_sq += sq
            if x is None:
                continue
            # A product with d.T is taken as (. @ d).T: row-major d read along its rows (half the time on CPU)
            if by_rows:  # x: local columns
                y = d @ xw
                self.step += (y.T @ d).T.double()
            else:  # x: local rows
                y = (xw.T @ d).T
                self.step += (d @ y).double()
            y = y.double()
            self.gram += y.T @ y
        self.fro_sq = float(self.row_sq.sum())


def _error_left(sigmas: list[float]) -> float:
    """Error left in the last of a rising, linearly converging sequence, from its last three terms (Aitken);
    inf until there are three, or while the steps do not shrink."""
    if len(sigmas) < 3:
        return math.inf
    d1, d0 = sigmas[-1] - sigmas[-2], sigmas[-2] - sigmas[-3]
    if d1 <= 0:  # no rise left (the Ritz value is monotone up to rounding): converged
        return 0.0
    if d0 <= 0 or d1 >= d0:
        return math.inf
    rho = d1 / d0
    return d1 * rho / (1 - rho)


class WeightDrift:
    """drift/weight_abs and drift/weight_rel (all trained parameters), drift/weight_rel/<layer>,
    drift/weight_spec/<layer>.

    `view_of(p)` gives the local ShardView of a parameter; `reduce(t, axis)` sums a float64 tensor over
    the ranks that hold parts of it (identity in one process). Both come from parallel/ when sharded.
    """

    def __init__(self, named_params: dict[str, torch.Tensor], rules: dict[str, Rule], seed: int,
                 view_of: Callable[[torch.Tensor], ShardView] = plain_view,
                 reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 spectral: bool = True, max_iters: int = SPECTRAL_MAX_ITERS, tol: float = SPECTRAL_TOL,
                 cache_bytes: int | None = None):
        self.params, self.rules, self.seed = named_params, rules, seed
        self.view_of = view_of
        self.reduce = reduce or (lambda t, p: t)
        self.sharded = reduce is not None
        self.spectral, self.max_iters, self.tol = spectral, max_iters, tol
        sq = {n: self._sum(torch.tensor([float(view_of(p).local.double().square().sum())], dtype=torch.float64), p)
              for n, p in named_params.items()}
        self.init_sq = {n: float(v[0]) for n, v in sq.items()}  # ||theta_0||^2 (the tensors are theta_0 now)
        self.vectors: dict[str, torch.Tensor] = {}  # warm-started subspace bases, per weight
        local_bytes = sum(p.numel() * p.element_size() for p in named_params.values())
        largest = max((p.numel() * p.element_size() for p in named_params.values()), default=0)
        self.w0: dict[str, torch.Tensor] = {}  # exact local copies of W_0, only for small models
        budget = int(os.environ.get(W0_CACHE_ENV, W0_CACHE_BYTES if cache_bytes is None else cache_bytes))
        if local_bytes + largest <= budget:  # the copy of W_0 and the buffer of D
            self.w0 = {n: view_of(p).local.clone() for n, p in named_params.items()}
        # D = W_t - W_0 of one weight at a time is written into one buffer (per dtype and device), reused weight after
        # weight and row after row: it stays in cache where one per weight would not (3 x 4 MB at width 1024, beside
        # W_t and W_0), and a fresh allocation of a wide layer's size costs its page faults again on every row
        self.d_buf: dict[tuple, torch.Tensor] = {}

    def _sum(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return self.reduce(t, p)  # sums parts held by the ranks that shard p (identity when unsharded)

    def _spectral_params(self) -> list[str]:
        return [n for n, p in self.params.items() if n.endswith("weight") and p.dim() >= 2] if self.spectral else []

    def _start_basis(self, name: str, length: int, device) -> torch.Tensor:
        k = min(K_SUBSPACE, length)
        v = self.vectors.get(name)
        if v is not None and v.shape == (length, k):
            return v.to(device)  # the last row's basis: a Q factor, orthonormal already
        v = torch.randn(length, k, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
        return torch.linalg.qr(v.to(device))[0]

    def _d(self, name: str, view: ShardView) -> torch.Tensor | None:
        """The local D = W_t - W_0 when W_0 is cached (in a buffer reused row after row), else None (regenerated
        block by block in each pass)."""
        if name not in self.w0:
            return None
        w = view.local
        key = (w.dtype, w.device)
        if key not in self.d_buf or self.d_buf[key].numel() < w.numel():
            self.d_buf[key] = torch.empty(w.numel(), dtype=w.dtype, device=w.device)
        return torch.sub(w, self.w0[name], out=self.d_buf[key][:w.numel()].view(w.shape))

    def _power(self, name: str, p: torch.Tensor, precise: bool) -> tuple[float, float, bool, torch.Tensor]:
        """(||D||_F^2, ||D||_2, converged, local |row of D|^2) for one weight, by warm-started subspace iteration
        until the estimated error is below `tol` (SPECTRAL_TOL_FINAL when `precise`), or `max_iters` (not converged)."""
        max_iters, tol = self.max_iters, (min(self.tol, SPECTRAL_TOL_FINAL) if precise else self.tol)
        view = self.view_of(p)
        rows, cols = view.global_shape
        col_shard = view.local.shape[1] < cols
        side = "left" if col_shard else "right"
        length, offset, extent = (rows, view.row0, view.local.shape[0]) if col_shard else \
            (cols, view.col0, view.local.shape[1])
        v = self._start_basis(name, length, view.local.device)
        k = v.shape[1]
        d = self._d(name, view)
        fro_sq, row_sq, sigmas, converged = None, None, [], False
        for _ in range(max_iters):
            ps = _Pass(view, self.rules[name], self.seed, name, v[offset:offset + extent], side, self.w0.get(name),
                       norms=fro_sq is None, d=d)
            if self.sharded:
                step = torch.zeros(length, k, dtype=torch.float64, device=v.device)
                step[offset:offset + extent] = ps.step
                head = torch.cat([torch.tensor([ps.fro_sq], dtype=torch.float64, device=v.device), ps.gram.flatten()])
                packed = self._sum(torch.cat([head, step.flatten()]), p)  # one all-reduce per iteration
                part_fro, gram, nxt = float(packed[0]), packed[1:1 + k * k].reshape(k, k), packed[1 + k * k:].reshape(
                    length, k)
            else:  # the whole weight is here: nothing to sum
                part_fro, gram, nxt = ps.fro_sq, ps.gram, ps.step
            if fro_sq is None:
                fro_sq, row_sq = part_fro, ps.row_sq
            # diverged weights: no spectral norm to speak of (a finite D gives a finite ||D||_F and Gram; a finite Gram
            # bounds every column of D V, and D^T D V is finite where D and D V are)
            if not (math.isfinite(fro_sq) and bool(torch.isfinite(gram).all())):
                return fro_sq, float("nan"), True, row_sq
            # Rayleigh-Ritz: the top eigenvalue theta of V^T A V (A = D^T D, V orthonormal) is a lower bound on
            # sigma_1^2, and A V came with it, so the Ritz pair's residual |A y - theta y| costs nothing more.
            evals, evecs = torch.linalg.eigh(gram)
            theta, top = max(float(evals[-1]), 0.0), evecs[:, -1]
            sigmas.append(math.sqrt(theta))
            if fro_sq == 0.0:  # D = 0: no drift yet
                sigmas.append(0.0)
                converged = True
                break
            residual = float((nxt @ top - theta * (v @ top)).norm())
            if not math.isfinite(residual):  # D^T D V overflowed
                return fro_sq, float("nan"), True, row_sq
            v = torch.linalg.qr(nxt)[0]
            # Converged when either bound says the error left is below tol * sigma: the residual (some eigenvalue of
            # A lies within |r| of theta, so sigma within |r| / (2 sigma): one pass on a warm-started row), or the
            # Aitken estimate of the sequence (module doc).
            if (residual <= 2 * tol * theta and (len(sigmas) > 1 or not precise)) \
                    or _error_left(sigmas) <= tol * sigmas[-1]:
                converged = True
                break
        self.vectors[name] = v
        return fro_sq, sigmas[-1], converged, row_sq

    def _unit_max(self, p: torch.Tensor, row_sq: torch.Tensor) -> float:
        """max over units (rows of the global weight) of |w_r(t) - w_r(0)|_2, from the local row sums."""
        view = self.view_of(p)
        full = torch.zeros(view.global_shape[0], dtype=torch.float64, device=row_sq.device)
        full[view.row0:view.row0 + row_sq.shape[0]] = row_sq
        return math.sqrt(float(self._sum(full, p).max()))

    @torch.no_grad()  # the weights are read only: no autograd graph over W_t - W_0 and its products
    def compute(self, precise: bool = False) -> dict[str, float]:
        diff: dict[str, float] = {}
        out: dict[str, float] = {}
        spectral = set(self._spectral_params())
        unconverged = 0
        for n, p in self.params.items():
            if n in spectral:
                diff[n], sigma, converged, row_sq = self._power(n, p, precise)
                out[names.drift_weight_spec(layer_name(n))] = sigma
                unconverged += not converged
            else:
                view = self.view_of(p)
                ps = _Pass(view, self.rules[n], self.seed, n, None, "right", self.w0.get(n), d=self._d(n, view))
                diff[n] = float(self._sum(torch.tensor([ps.fro_sq], dtype=torch.float64), p)[0])
                row_sq = ps.row_sq
            if n.endswith("weight") and p.dim() >= 2:
                out[names.drift_neuron_max(layer_name(n))] = self._unit_max(p, row_sq)
        if spectral:
            out[names.DRIFT_SPEC_UNCONVERGED] = unconverged
        # Neurons are the hidden ReLU units: the read-out's rows (one per output, fan-in m) are not, and move O(1)
        # when trained, which would hide the hidden units' O(m^-1/2) law (their value stays under /output).
        per_unit = [v for k, v in out.items() if k.startswith(names.DRIFT_NEURON_MAX + "/")
                    and k != names.drift_neuron_max("output")]
        if per_unit:
            out[names.DRIFT_NEURON_MAX] = max(per_unit)
        total_init = sum(self.init_sq.values())
        out[names.DRIFT_WEIGHT_ABS] = math.sqrt(sum(diff.values()))
        out[names.DRIFT_WEIGHT_REL] = math.sqrt(sum(diff.values()) / total_init) if total_init > 0 else float("nan")
        by_layer: dict[str, list[float]] = {}
        for n in self.params:
            acc = by_layer.setdefault(layer_name(n), [0.0, 0.0])
            acc[0] += diff[n]
            acc[1] += self.init_sq[n]
        for layer, (d, i) in by_layer.items():
            out[names.drift_weight_rel(layer)] = math.sqrt(d / i) if i > 0 else float("nan")
        return out

    def state(self) -> dict:
        return {n: v.cpu().tolist() for n, v in self.vectors.items()}

    def load(self, state: dict) -> None:
        self.vectors = {n: torch.tensor(v, dtype=torch.float64) for n, v in state.items()}
