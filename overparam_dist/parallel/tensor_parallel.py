"""Tensor parallelism for our FC, ResNet and CNN, applied from outside the model.

Each wide layer keeps only its local shard as a plain Parameter; the collectives are autograd
functions attached with forward hooks, so the model's own forward (and every metric that hooks a
layer's input and output, such as the layer-wise NTK) is unchanged:

    colwise        weight rows (output units / channels) split; input replicated -> output local shard.
                   f = identity forward, all-reduce backward on the input.
    rowwise        weight columns (input units / channels) split; input local shard -> output replicated.
                   g = all-reduce forward, identity backward on the output (the bias is added once).
    colwise_gather colwise whose input arrives as a local shard: all-gather forward, reduce-scatter
                   backward (ResNet: the residual stream stays sharded, every layer needs the full input).

Plans: FC and CNN alternate colwise / rowwise, so a pair of wide layers costs one all-reduce; the
read-out B is rowwise after a colwise layer and replicated after a rowwise one. ResNet keeps its
residual stream sharded (input colwise, hidden colwise_gather, output rowwise).

Why not DTensor + parallelize_module: DTensor has no channel-sharded convolution, and DDP cannot wrap
DTensor parameters (docs/ARCHITECTURE.md, "Parallelism"). Local shards keep one code path for linear and conv
layers, plain DDP over the dp group, and shard-local metrics (each rank computes partial norms / Grams, one
all-reduce completes them). Checkpoints wrap the shards as DTensors (see `state_dict`), so DCP
reshards between tp sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..models.init import shape2d


@dataclass(frozen=True)
class Shard:
    """Where a local parameter shard sits in its global parameter."""

    dim: int  # 0: rows (output units) split, 1: columns (input units / channels) split
    global_shape: tuple[int, ...]
    start: int  # first global index along `dim` (in the parameter's own dim, not the 2-D view)
    size: int

    def view(self, local: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int], int, int]:
        """(local 2-D view, global 2-D shape, row0, col0) in the (out, in * k * k) view."""
        g2 = shape2d(torch.Size(self.global_shape))
        local2d = local.detach().reshape(local.shape[0], -1) if local.dim() > 1 else local.detach().reshape(-1, 1)
        if self.dim == 0:
            return local2d, g2, self.start, 0
        receptive = g2[1] // self.global_shape[1]
        return local2d, g2, 0, self.start * receptive


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _GatherFromTP(torch.autograd.Function):
    """All-gather along `dim`; backward sums the gradient over ranks and keeps the local slice."""

    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        size = dist.get_world_size(ctx.group)
        return grad.chunk(size, dim=ctx.dim)[dist.get_rank(ctx.group)].contiguous(), None, None


def _copy_hook(group):
    def hook(module, args):
        return (_CopyToTP.apply(args[0], group), *args[1:])
    return hook


def _gather_hook(group, dim):
    def hook(module, args):
        return (_GatherFromTP.apply(args[0], group, dim), *args[1:])
    return hook


def _reduce_hook(group):
    def hook(module, args, out):
        bias = getattr(module, "bias", None)
        if bias is None:
            return _ReduceFromTP.apply(out, group)
        b = bias if out.dim() == 2 else bias.view(1, -1, *([1] * (out.dim() - 2)))
        # The local forward added the (replicated) bias once per rank: sum W x only, then add it once.
        return _ReduceFromTP.apply(out - b, group) + b
    return hook


def plan_for(arch: str, depth: int) -> dict[str, str]:
    """module name -> style ('colwise' | 'rowwise' | 'colwise_gather'); unlisted modules are replicated."""
    if arch == "resnet":
        plan = {"input": "colwise", **{f"hidden.{i}": "colwise_gather" for i in range(depth)}}
        plan["output"] = "rowwise"
        return plan
    plan = {"input": "colwise"}
    last = "colwise"
    for i in range(depth):
        last = "rowwise" if last == "colwise" else "colwise"
        plan[f"hidden.{i}"] = last
    if last == "colwise":
        plan["output"] = "rowwise"
    return plan


def sharded_activations(plan: dict[str, str]) -> set[str]:
    """Layers whose output (the input of the ReLU that follows) is a local shard."""
    return {name for name, style in plan.items() if style in ("colwise", "colwise_gather")}


def shard_module_params(model: nn.Module, plan: dict[str, str], tp_rank: int, tp: int) -> dict[str, Shard]:
    """Replace each planned layer's parameters by their local shapes (on the meta device, before init)."""
    shards: dict[str, Shard] = {}
    modules = dict(model.named_modules())
    for name, style in plan.items():
        module = modules[name]
        w = module.weight
        dim = 0 if style in ("colwise", "colwise_gather") else 1
        full = w.shape[dim]
        size = full // tp
        local_shape = list(w.shape)
        local_shape[dim] = size
        shards[f"{name}.weight"] = Shard(dim, tuple(w.shape), tp_rank * size, size)
        module.weight = nn.Parameter(torch.empty(local_shape, device="meta", dtype=w.dtype),
                                     requires_grad=w.requires_grad)
        if module.bias is not None and dim == 0:  # rowwise keeps its bias whole (replicated)
            b = module.bias
            shards[f"{name}.bias"] = Shard(0, tuple(b.shape), tp_rank * size, size)
            module.bias = nn.Parameter(torch.empty(size, device="meta", dtype=b.dtype), requires_grad=b.requires_grad)
        if hasattr(module, "in_channels"):  # keep conv metadata truthful about the local shard
            module.out_channels, module.in_channels = module.weight.shape[0], module.weight.shape[1]
        elif hasattr(module, "in_features"):
            module.out_features, module.in_features = module.weight.shape[0], module.weight.shape[1]
    return shards


def attach_collectives(model: nn.Module, plan: dict[str, str], group) -> None:
    modules = dict(model.named_modules())
    for name, style in plan.items():
        module = modules[name]
        if style == "colwise":
            module.register_forward_pre_hook(_copy_hook(group))
        elif style == "colwise_gather":
            module.register_forward_pre_hook(_gather_hook(group, 1))
        else:
            module.register_forward_hook(_reduce_hook(group))


def state_dict(model: nn.Module, shards: dict[str, Shard], mesh) -> dict[str, torch.Tensor]:
    """Model state with every shard wrapped as a DTensor of its global shape, for DCP (resharding)."""
    from torch.distributed.tensor import DTensor, Replicate
    from torch.distributed.tensor import Shard as DShard

    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        s = shards.get(name)
        if s is None or mesh is None:
            out[name] = p.data
            continue
        global_stride = torch.empty(s.global_shape, device="meta").stride()
        out[name] = DTensor.from_local(p.data, mesh, [Replicate(), DShard(s.dim)], run_check=False,
                                       shape=torch.Size(s.global_shape), stride=global_stride)
    return out
