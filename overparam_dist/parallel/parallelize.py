"""Apply parallelism to a model from outside: tensor parallel shards (tp), then data parallel (dp).

`Parallelism` is the one object the training loop and the metrics ask about sharding: which parameters
are shards, where each sits in its global weight, and how to complete a partial sum.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from . import tensor_parallel as tpl
from .distributed import World
from .shard_view import ShardView, plain_view


class Parallelism:
    def __init__(self, world: World, arch: str, depth: int):
        self.world = world
        self.plan = tpl.plan_for(arch, depth) if world.tp > 1 else {}
        self.shards: dict[str, tpl.Shard] = {}
        self._by_id: dict[int, tpl.Shard] = {}
        self.tp_group = world.group("tp")

    # -- model construction ------------------------------------------------------------------------
    def shard(self, model: nn.Module) -> dict[str, tpl.Shard]:
        """For build_model: replace planned layers' parameters by local shards (meta device)."""
        if self.world.tp > 1:
            self.shards = tpl.shard_module_params(model, self.plan, self.world.tp_rank, self.world.tp)
        return self.shards

    def wrap(self, model: nn.Module) -> nn.Module:
        """Attach the tp collectives, then wrap for dp. Returns the module to call for training."""
        self._by_id = {id(p): self.shards[n] for n, p in model.named_parameters() if n in self.shards}
        if self.world.tp > 1:
            tpl.attach_collectives(model, self.plan, self.tp_group)
        if self.world.dp > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            device_ids = [self.world.device.index] if self.world.device.type == "cuda" else None
            # Plain DDP over the dp group: each tp rank holds plain local shards, so DDP averages each
            # shard across its dp replicas. Initial values are identical across replicas by construction.
            return DDP(model, device_ids=device_ids, process_group=self.world.group("dp"))
        return model

    # -- questions the metrics ask ---------------------------------------------------------------------
    def is_sharded(self, p: torch.Tensor) -> bool:
        return id(p) in self._by_id

    def view_of(self, p: torch.Tensor) -> ShardView:
        s = self._by_id.get(id(p))
        if s is None:
            return plain_view(p)
        local2d, g2, row0, col0 = s.view(p)
        return ShardView(local2d, g2, row0, col0)

    def reduce(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Sum a partial result over the tp ranks holding shards of p (identity for replicated p)."""
        if self.is_sharded(p):
            dist.all_reduce(t, group=self.tp_group)
        return t

    def reduce_tp(self, t: torch.Tensor) -> torch.Tensor:
        if self.tp_group is not None:
            dist.all_reduce(t, group=self.tp_group)
        return t

    def sq_norm(self, t: torch.Tensor, p: torch.Tensor) -> float:
        """Squared Frobenius norm of p-shaped t (a gradient), summed over shards when p is sharded."""
        flat = t.detach().reshape(-1)
        local = torch.dot(flat, flat).double().reshape(1)
        return float(self.reduce(local, p)[0])

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return tpl.state_dict(model, self.shards, self.world.mesh if self.world.tp > 1 else None)

    def sharded_activations(self) -> set[str]:
        return tpl.sharded_activations(self.plan) if self.world.tp > 1 else set()
