"""The capture of the layer-wise NTK (ntk.py): one forward and C backwards over a block of samples give every routed
layer's inputs A and backprop signals Delta, and the exact per-sample gradients of the fallback parameters.

The forward is this module's own (`_capture`, then `finish_capture`), or one the caller runs (`capturing` around it):
a training step's forward over the probe set is then the kernel's capture forward as well, and its backward gives the
signals of one output (`capture_from_backward`, metrics/tracker.py), so the kernel costs C - 1 backwards alone. The
hooks, the guard and the checks are the same either way (ntk.py's module doc: exactness guards).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .ntk_plan import Layer, Reroute, RoutePlan


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


class _ParamUseGuard(TorchFunctionMode):
    """Flags routed parameters that feed a differentiable op outside their own module's forward.

    Such a use adds gradient paths our hooks never see; a use without a gradient path (.shape, under no_grad,
    .detach()) is harmless and not flagged.
    """

    def __init__(self, tracked: dict[int, int], active: set[int], misused: set[int]):
        super().__init__()
        self.tracked, self.active, self.misused = tracked, active, misused

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        hits = [self.tracked[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.tracked]
        hits = [li for li in hits if li not in self.active]
        if hits and any(t.requires_grad for t in _tensors(out)):
            self.misused.update(hits)
        return out


@dataclass
class _Capture:
    n: int
    C: int
    a: list  # per layer: (n, g, P, din) inputs / unfolded patches, or None (weight frozen or never called)
    d: list  # per layer: (n, g, P, C, dout) backprop signals, or None (never called)
    fb: torch.Tensor | None  # (n, C, F) per-sample gradients of the fallback parameters


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    # Per-layer products in the model's dtype when it is float32/64 (float64 would halve CPU matmul speed);
    # a bf16/fp16 model would lose the kernel in rounding, so those go to float32. Every per-layer, per-chunk
    # result is cast to float64 before it is summed (_pair_gram, _gram_route).
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _work(t: torch.Tensor) -> torch.Tensor:
    return t.to(_work_dtype(t.dtype))


def _patches(layer: Layer, a: torch.Tensor) -> torch.Tensor:
    """(n, g, P, din): what the weight multiplies at each position, in the weight's (group, in) layout."""
    if layer.kind == "linear":
        return a.reshape(a.shape[0], 1, -1, a.shape[-1])
    kernel, stride, dilation, groups, pad4, mode = layer.conv
    a = F.pad(a, pad4, mode="constant" if mode == "zeros" else mode) if any(pad4) else a
    u = F.unfold(a, kernel, dilation=dilation, padding=0, stride=stride)  # (n, Cin*kh*kw, P), channel-major
    return u.view(u.shape[0], groups, -1, u.shape[-1]).transpose(2, 3)


def _signal_view(layer: Layer, g: torch.Tensor) -> torch.Tensor:
    """(n, groups, P, dout) view of the gradient w.r.t. one call's module output."""
    if layer.kind == "linear":  # (n, ..., out)
        return g.reshape(g.shape[0], 1, -1, g.shape[-1])
    groups = layer.conv[3]  # (n, Cout, Ho, Wo), output channels group-major
    return g.reshape(g.shape[0], groups, g.shape[1] // groups, -1).transpose(2, 3)


class _Recorder:
    """What the capture hooks collect during one forward over n samples: each routed layer's inputs and a zero leaf
    per call added to its output (grad(z) = delta), and the layers the guard or the hooks could not follow."""

    def __init__(self, plan: RoutePlan, n: int):
        self.plan, self.n = plan, n
        self.active: set[int] = set()
        self.misused: set[int] = set()
        self.failed: set[int] = set()
        self.inputs: list[list] = [[] for _ in plan.layers]  # (detached input, its version) per call
        self.zs: list[list] = [[] for _ in plan.layers]


@contextmanager
def capturing(model: nn.Module, plan: RoutePlan, n: int) -> Iterator[_Recorder]:
    """Within the block, a forward of `model` over `n` samples (the caller's: this module's own, or a training
    step's) records what the layer-wise NTK needs; `finish_capture` then takes it from the forward's output."""
    layers = plan.layers
    rec = _Recorder(plan, n)
    index = {id(layer.module): li for li, layer in enumerate(layers)}
    tracked = {id(p): li for li, layer in enumerate(layers) for p in layer.params()}

    def pre_hook(mod, args):
        rec.active.add(index[id(mod)])

    def post_hook(mod, args, kwargs, out):
        li = index[id(mod)]
        rec.active.discard(li)
        layer = layers[li]
        a = args[0] if args else kwargs.get("input")
        ok = (isinstance(a, torch.Tensor) and isinstance(out, torch.Tensor)
              and a.dim() >= 2 and a.shape[0] == n)
        if ok and layer.kind == "linear":
            ok = a.shape[:-1] == out.shape[:-1]
        elif ok:  # conv: batched 4-D input whose unfolded positions match the output pixels
            ok = a.dim() == 4 and out.dim() == 4
        if not ok:
            rec.failed.add(li)
            return None
        if layer.weight is not None:
            a = a.detach()
            rec.inputs[li].append((a.clone() if plan.clone_inputs else a, a._version))
        # y + z with z = 0 a leaf: d f / d z is exactly d f / d y, and stays so even if y is later
        # modified in place (which would re-point a tensor hook on y to another value).
        z = torch.zeros_like(out, requires_grad=True)
        rec.zs[li].append(z)
        return out + z

    handles = []
    try:
        for layer in layers:
            # Input captured after any user pre-hooks (what forward sees); z added before user forward
            # hooks (the raw output); user hooks run outside "active", so parameter uses there are caught.
            handles.append(layer.module.register_forward_pre_hook(pre_hook))
            handles.append(layer.module.register_forward_hook(post_hook, with_kwargs=True, prepend=True))
        with _ParamUseGuard(tracked, rec.active, rec.misused):
            yield rec
    finally:
        for h in handles:
            h.remove()


def _check(rec: _Recorder) -> None:
    """Raises Reroute for the layers the watched forward could not follow, or once an input was modified in place
    after its layer read it (the plan then keeps copies)."""
    if rec.misused or rec.failed:
        raise Reroute(rec.misused | rec.failed)
    if not rec.plan.clone_inputs and any(a._version != v for calls in rec.inputs for a, v in calls):
        rec.plan.clone_inputs = True
        raise Reroute(set())


def _signal_buffers(rec: _Recorder, C: int) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
    """(layer of each call, each call's zero leaf z, a zero (n, g, P, C, dout) buffer for its signals): the layout the
    Grams read, so the common trace case is a view."""
    owner = [li for li, calls in enumerate(rec.zs) for _ in calls]
    flat = [z for calls in rec.zs for z in calls]
    bufs = []
    for li, z in zip(owner, flat):
        n, g, P, dout = _signal_view(rec.plan.layers[li], z).shape
        bufs.append(torch.zeros(n, g, P, C, dout, dtype=_work_dtype(z.dtype), device=z.device))
    return owner, flat, bufs


def finish_capture(model: nn.Module, rec: _Recorder, f: torch.Tensor, x: torch.Tensor | None = None) -> _Capture:
    """The capture from the output `f` of the forward that `rec` watched: C backwards of sum_i f_c(x_i). Raises
    Reroute for layers it could not follow. With `x` (the forward's inputs), checks once that a sample's output
    does not depend on the others."""
    n = rec.n
    f = f.reshape(n, -1)
    C = f.shape[1]
    _check(rec)
    if x is not None and n > 1:
        with torch.no_grad():
            f0 = model(x[:1]).reshape(1, -1)
        tol = torch.finfo(f.dtype).eps ** 0.5 * (1.0 + f.detach().abs().max().item())
        if not torch.allclose(f0, f[:1].detach(), rtol=0.0, atol=tol):
            raise ValueError("empirical_ntk: a sample's output depends on the other samples in its batch "
                             "(batch statistics or randomness in forward); the layer-wise NTK assumes "
                             "independent samples - put the model in eval mode")

    # C backwards of sum_i f_c(x_i): samples are independent, so row i of grad(z) is d f_c(x_i) / d y_i.
    owner, flat, grads = _signal_buffers(rec, C)
    if flat and f.requires_grad:
        for c in range(C):
            gs = torch.autograd.grad(f[:, c].sum(), flat, retain_graph=c < C - 1, allow_unused=True)
            for li, buf, g in zip(owner, grads, gs):
                if g is not None:
                    buf[:, :, :, c] = _signal_view(rec.plan.layers[li], g)
            del gs
    del f, flat
    return _collect(rec, grads, C)


@torch.enable_grad()  # its backwards run through the training step's graph, whatever the caller's grad mode
def capture_from_backward(rec: _Recorder, f: torch.Tensor) -> _Capture | None:
    """The capture from a backward that already ran through the forward `rec` watched: the training step's, of a loss
    L of f, after f.retain_grad() and keeping the graph (retain_graph) where f has C > 1 outputs. It costs C - 1
    backwards where finish_capture costs C.

    Samples are independent, so row i of grad(z) is g_i = sum_c c_ic s_ic, with c_ic = dL/df_ic and s_ic = the signal
    d f_c(x_i) / d y_i that finish_capture's backward c gives. For each sample the output k with the largest |c_ik|
    is recovered, s_ik = (g_i - sum_{c != k} c_ic s_ic) / c_ik, and the others come from C - 1 backwards, the j-th
    starting from output o_j(i) of each sample i. A backward is linear in what it starts from, so the recovered
    signal has the others' rounding, amplified by at most 1 + 2 sum_{c != k} |c_ic / c_ik| |s_ic| / |s_ik|
    <= 1 + 2 (C - 1) max_{c != k} |s_ic| / |s_ik|: of the order of the sample's largest signal, as the trace kernel's
    entries are.

    None where it gives none: no backward reached f, or some c_ik or g_i is not finite, or some |c_ik| is below
    sqrt(tiny) of its dtype (entries of c_ik s_ik that underflow are then below sqrt(tiny), under the rounding of
    the rest). Raises Reroute as finish_capture does."""
    n = rec.n
    _check(rec)
    if f.grad is None:
        return None
    fc = f.reshape(n, -1)
    C = fc.shape[1]
    c = f.grad.reshape(n, C)
    k = c.abs().argmax(1)  # per sample, the output recovered by division
    rows = torch.arange(n, device=c.device)
    ck = c[rows, k]
    if not (bool(torch.isfinite(c).all()) and bool((ck.abs() >= torch.finfo(c.dtype).tiny ** 0.5).all())):
        return None
    owner, flat, grads = _signal_buffers(rec, C)
    trained = [z.grad for z in flat]  # what the training backward left: g per call
    layers = rec.plan.layers
    for j in range(C - 1):
        o = j + (k <= j).long()  # each sample's j-th output other than k
        start = torch.zeros_like(fc)
        start[rows, o] = 1
        gs = torch.autograd.grad(fc, flat, grad_outputs=start, retain_graph=j < C - 2, allow_unused=True)
        for li, buf, g in zip(owner, grads, gs):
            if g is not None:
                buf[rows, :, :, o] = _signal_view(layers[li], g).to(buf.dtype)
        del gs
    for li, buf, g in zip(owner, grads, trained):
        if g is None:  # this call's output does not reach f: no signal
            continue
        g = _signal_view(layers[li], g).to(buf.dtype)
        if not bool(torch.isfinite(g).all()):
            return None
        known = torch.einsum("ic,igpcd->igpd", c.to(buf.dtype), buf)  # s_ik is still zero in buf
        buf[rows, :, :, k] = (g - known) / ck.to(buf.dtype).view(n, 1, 1, 1)
    return _collect(rec, grads, C)


def _collect(rec: _Recorder, grads: list[torch.Tensor], C: int) -> _Capture:
    """The _Capture of every layer: its inputs' patches and its calls' signals (several calls of one module, weight
    sharing, are just more positions)."""
    a_out, d_out = [], []
    for li, layer in enumerate(rec.plan.layers):
        ds = [grads.pop(0) for _ in rec.zs[li]]
        us = [_patches(layer, _work(t)) for t, _ in rec.inputs[li]]
        if any(u.shape[2] != s.shape[2] for u, s in zip(us, ds)):  # conv geometry not reproduced: don't guess
            raise Reroute({li})
        a_out.append(None if not us else us[0] if len(us) == 1 else torch.cat(us, dim=2))
        d_out.append(None if not ds else ds[0] if len(ds) == 1 else torch.cat(ds, dim=2))
        del ds, us
    return _Capture(rec.n, C, a_out, d_out, None)


def _capture(model: nn.Module, plan: RoutePlan, x: torch.Tensor, check_independence: bool) -> _Capture:
    with capturing(model, plan, x.shape[0]) as rec:
        f = model(x)
    cap = finish_capture(model, rec, f, x if check_independence else None)
    if plan.fallback:
        cap.fb = _fallback_grads(model, plan.fallback, x, cap.C)
    return cap


def _fallback_grads(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, C: int) -> torch.Tensor:
    """(n, C, F) exact per-sample gradients of `params`, one forward per sample and C backwards."""
    numel = sum(p.numel() for p in params)
    out = torch.zeros(x.shape[0], C, numel, dtype=_work_dtype(params[0].dtype), device=x.device)
    for i in range(x.shape[0]):
        f = model(x[i:i + 1]).reshape(-1)
        if not f.requires_grad:
            continue
        for c in range(C):
            gs = torch.autograd.grad(f[c], params, retain_graph=c < C - 1, allow_unused=True)
            flat = [g.reshape(-1) if g is not None else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                    for g, p in zip(gs, params)]
            out[i, c] = torch.cat(flat)
    return out
