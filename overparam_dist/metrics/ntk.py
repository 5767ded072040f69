"""Exact empirical NTK, computed layer by layer, without any per-sample Jacobian.

    K[i, j]               = sum_c <df_c(x_i)/dtheta, df_c(x_j)/dtheta>      outputs="trace"  (n, n)
    K[i*C + c, j*C + c']  =       <df_c(x_i)/dtheta, df_c'(x_j)/dtheta>     outputs="full"   (nC, nC)

over the model's trainable parameters (requires_grad=True).

Why it is cheap. A layer y = m * (W a) + b applied at positions p (the rows of a Linear's (n, ..., in)
input, the output pixels of a conv, every call of a shared module) has the per-sample gradients
    dW_i = m * sum_p delta_ip a_ip^T,    db_i = sum_p delta_ip,     delta = df_c / dy,
so their inner products need only the layer's inputs a (n, P, in) and backprop signals delta (C, n, P, out):
    <dW_i, dW_j> = m^2 * sum_{p,q} (delta_ip . delta_jq)(a_ip . a_jq).
For a Linear (P = 1) that is m^2 (Delta Delta^T) * (A A^T): O(n (in + C out)) memory per layer instead of
the O(n C in out) of a per-sample Jacobian. For convs P is large and the (nP x nP) Gram can cost more than
forming the (small) per-sample weight gradients, so each layer takes the cheaper of the two exact routes.

Assumption: samples do not interact (the model is in a mode where f(x_i) depends on x_i only: no
train-mode BatchNorm, no active dropout). It lets one backward of sum_i f_c(x_i) give every sample's
delta for output c at once (C backwards in all). Checked: train-mode BatchNorm / dropout raise, and the
first sample's output in the batch must equal its output computed alone.

Exactness guards (never a wrong answer, never a silent skip):
* a module is routed layer-wise only if its forward is one whose semantics we know (nn.Linear, nn.Conv2d,
  our ScaledLinear / ScaledConv2d) and it owns its parameter alone (tied weights go to the fallback);
* during the capture forward a TorchFunctionMode watches every op: a routed parameter used outside its own
  module's forward (e.g. `F.linear(h, self.lin.weight)` elsewhere) sends that layer to the fallback;
* every other trainable parameter (LayerNorm, Embedding, bare nn.Parameter, ...) goes through an exact
  per-sample-gradient fallback (one forward per sample, C backwards), and we assert each trainable parameter
  is covered by exactly one route.

Side effects: none. Gradients come from torch.autograd.grad (never .backward), so .grad stays as it was;
our hooks are removed on exit; parameters are only read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .ntk_capture import _Capture, _capture, _fallback_grads
from .ntk_gram import gram_route, pair_gram, psg_route
from .ntk_plan import Reroute, RoutePlan, check_no_batch_coupling

DEFAULT_BLOCK = 512  # samples per block when block_size is None: captures then stay O(512 * width) per layer


# --------------------------------------------------------------------------------------------------
# Grams between the captures of two sample blocks I and J.

def _route_costs(n: int, C: int, g: int, P: int, din: int, dout: int, full: bool) -> tuple[float, float]:
    """Flop estimates (gram, per-sample gradients) of one layer's weight Gram on blocks of n samples."""
    k = C * C if full else C
    gram = g * (n * P) ** 2 * (din + k * dout + k)
    psg = g * dout * din * (2 * n * C * P + n * n * k)
    return float(gram), float(psg)


def _block_gram(plan: RoutePlan, capI: _Capture, capJ: _Capture, full: bool, same: bool, device):
    """(layer-route Gram, fallback Gram) of blocks I x J, float64. All layer Grams are summed here."""
    k = capI.C if full else 1
    K = torch.zeros(capI.n * k, capJ.n * k, dtype=torch.float64, device=device)
    for li, layer in enumerate(plan.layers):
        dI, dJ = capI.d[li], capJ.d[li]
        if dI is None or dJ is None:  # module not called on this block: its parameters get no gradient
            continue
        if layer.weight is not None:
            aI, aJ = capI.a[li], capJ.a[li]
            if layer.route == "gram":
                Kw = gram_route(aI, dI, aJ, dJ, full)
            else:
                Kw = psg_route(aI, dI, aJ, dJ, full, same)
            K += layer.mult ** 2 * Kw
        if layer.bias is not None:
            K += pair_gram(dI.sum(2).transpose(1, 2).reshape(capI.n, capI.C, -1),  # db_i = sum_p delta_ip
                            dJ.sum(2).transpose(1, 2).reshape(capJ.n, capJ.C, -1), full)
    Kfb = pair_gram(capI.fb, capJ.fb, full) if capI.fb is not None else None
    return K, Kfb


# --------------------------------------------------------------------------------------------------

def empirical_ntk(model: nn.Module, x: torch.Tensor, *, outputs: str = "trace", block_size: int | None = None,
                  reduce_fn: Callable[[torch.Tensor], torch.Tensor] | None = None, memory_cap: int | None = None,
                  share: tuple[int, int, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                  captured: tuple[RoutePlan, _Capture] | None = None, check_independence: bool = True) -> torch.Tensor:
    """Exact empirical NTK of `model` at inputs `x` over its trainable parameters, float64.

    outputs: "trace" -> (n, n), summed over the C outputs; "full" -> (nC, nC), index i*C + c.
    block_size: samples per block (default: all n up to DEFAULT_BLOCK, or what `memory_cap` allows). Blocks I x J
        (tiles of rows x columns of samples) are computed from per-block captures, so memory is bounded by the
        block, not by n; the result is the same.
    memory_cap: bytes a tile may work in (the captures of its row and column blocks, and its Grams); the block
        size is then the largest that fits (tile_samples). The n x n result is apart from it.
    reduce_fn: applied once to the summed Gram of the layer-wise routes (all layers, all blocks) before the
        fallback Gram is added, e.g. an all-reduce over tensor-parallel shards that each hold part of every
        wide layer. Fallback parameters are computed in full on every caller and are not reduced.
    share: (rank, ranks, sum over ranks): the tiles are dealt out round-robin and each rank computes its own
        share; the sums assemble the whole kernel on every rank (data-parallel replicas: the time falls with dp,
        the result is the one rank's to the last bit, as x + 0 = x).
    captured: (plan, capture) of all of `x` from a forward the caller ran (capturing, then capture_from_backward
        after a training step's backward), which then is not run again.
    check_independence: check that a sample's output does not depend on the others (one extra forward of one
        sample; a caller that checked it once for this model may skip it).
    The model must treat samples independently (eval-mode BatchNorm, no active dropout); see module doc.
    """
    if outputs not in ("trace", "full"):
        raise ValueError(f"outputs must be 'trace' or 'full', not {outputs!r}")
    full = outputs == "full"
    check_no_batch_coupling(model)
    x = x.detach()
    n = x.shape[0]
    if captured is not None:
        plan, cap = captured
        if plan.fallback and cap.fb is None:
            cap.fb = _fallback_grads(model, plan.fallback, x, cap.C)
        with torch.enable_grad():
            return _assemble(model, plan, x, [(0, n)], full, reduce_fn, share, cap)
    plan = RoutePlan(model)

    def kernel() -> torch.Tensor:
        b = block_size or (tile_samples(model, plan, x, memory_cap, full) if memory_cap else min(n, DEFAULT_BLOCK))
        return _assemble(model, plan, x, [(s, min(s + b, n)) for s in range(0, n, b)], full, reduce_fn, share,
                         check=check_independence)

    return _rerouted(plan, kernel)


def _rerouted(plan: RoutePlan, fn: Callable[[], Any]) -> Any:
    """fn() with gradients on, tried again each time a capture finds layers it cannot route (they go to the
    exact fallback: plan.demote)."""
    with torch.enable_grad():
        while True:
            try:
                return fn()
            except Reroute as e:
                plan.demote(e.layer_ids)


TILE_GRAM_BYTES = 32  # per (sample, sample) entry of a tile: its float64 Gram and the per-layer products beside it


def tile_samples(model: nn.Module, plan: RoutePlan, x: torch.Tensor, memory_cap: int, full: bool = False) -> int:
    """The most samples b per tile whose working memory fits in `memory_cap` bytes (at least 1): the captures of
    two blocks and the autograd graph of the one being captured, 3 b s (s: bytes per sample of a capture, measured
    on the first few samples, whose tensors grow linearly in the samples; the graph holds about as much), and the
    tile's Grams, TILE_GRAM_BYTES (b C)^2 for full outputs, TILE_GRAM_BYTES b^2 for trace."""
    few = x[:min(x.shape[0], 4)]
    cap = _capture(model, plan, few, check_independence=False)
    held = sum(t.numel() * t.element_size() for t in (*cap.a, *cap.d, cap.fb) if t is not None)
    per_sample = max(1, held // few.shape[0])
    k = cap.C if full else 1
    a, b = TILE_GRAM_BYTES * k * k, 3 * per_sample  # a t^2 + b t <= memory_cap
    t = int((-b + math.sqrt(b * b + 4 * a * memory_cap)) / (2 * a))
    return max(1, min(x.shape[0], t))


def block_size_for(model: nn.Module, x: torch.Tensor, memory_cap: int, outputs: str = "trace") -> int:
    """tile_samples for `model` at `x`: what `memory_cap` makes the block size. A caller that takes the kernel of
    the same samples again and again (every logged row) measures it once and passes block_size."""
    plan = RoutePlan(model)
    return _rerouted(plan, lambda: tile_samples(model, plan, x.detach(), memory_cap, outputs == "full"))


def _assemble(model, plan: RoutePlan, x, blocks, full: bool, reduce_fn, share, cap0: _Capture | None = None,
              check: bool = True) -> torch.Tensor:
    """The kernel from the Grams of the block pairs (bi <= bj); `cap0`: the first block's capture, when taken."""
    n = x.shape[0]
    rank, ranks, share_sum = share if share is not None else (0, 1, None)
    pairs = [(bi, bj) for bi in range(len(blocks)) for bj in range(bi, len(blocks))]
    mine = {pair for i, pair in enumerate(pairs) if i % ranks == rank}
    # Every rank captures the first block first: routes are chosen from it, the same on every rank.
    cap0 = cap0 or _capture(model, plan, x[blocks[0][0]:blocks[0][1]], check_independence=check)
    k = cap0.C if full else 1
    K = torch.zeros(n * k, n * k, dtype=torch.float64, device=x.device)
    Kfb = torch.zeros_like(K) if plan.fallback else None
    _choose_routes(plan, cap0, full)
    for bi, (s0, e0) in enumerate(blocks):
        todo = [bj for bj in range(bi, len(blocks)) if (bi, bj) in mine]
        if bi > 0:
            cap0 = None  # no third block's capture beside a tile's two (tile_samples budgets two)
        if not todo:
            continue
        capI = cap0 if bi == 0 else _capture(model, plan, x[s0:e0], check_independence=False)
        for bj in todo:
            s1, e1 = blocks[bj]
            capJ = capI if bj == bi else _capture(model, plan, x[s1:e1], check_independence=False)
            kl, kf = _block_gram(plan, capI, capJ, full, bj == bi, x.device)
            K[s0 * k:e0 * k, s1 * k:e1 * k] = kl
            K[s1 * k:e1 * k, s0 * k:e0 * k] = kl.T
            if kf is not None:
                Kfb[s0 * k:e0 * k, s1 * k:e1 * k] = kf
                Kfb[s1 * k:e1 * k, s0 * k:e0 * k] = kf.T
            del capJ
        del capI
    if share_sum is not None:
        K = share_sum(K)
        Kfb = share_sum(Kfb) if Kfb is not None else None
    if reduce_fn is not None:
        K = reduce_fn(K)
    return K if Kfb is None else K + Kfb


def _choose_routes(plan: RoutePlan, cap: _Capture, full: bool) -> None:
    for li, layer in enumerate(plan.layers):
        if layer.route is not None or cap.a[li] is None:
            continue
        n, g, P, C, dout = cap.d[li].shape
        gram, psg = _route_costs(n, C, g, P, cap.a[li].shape[-1], dout, full)
        layer.route = "gram" if gram <= psg else "psg"
    for layer in plan.layers:  # never-called layers on this block: gram handles any later shapes
        layer.route = layer.route or "gram"


__all__ = ["empirical_ntk"]
