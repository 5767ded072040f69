"""Apply parallelism to an unsharded model from outside: tensor parallel (tp), then data parallel (dp)."""

from __future__ import annotations

import torch
from torch import nn

from .mesh import ParallelDims


def parallelize(model: nn.Module, pd: ParallelDims) -> nn.Module:
    """Return the module to call for training. Parameters stay those of `model` (possibly sharded)."""
    if pd.tp > 1:
        raise NotImplementedError("tensor parallelism (parallel.tp > 1) is not available yet")
    if pd.dp > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [pd.device.index] if pd.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters; they are identical anyway (init depends on the seed only).
        return DDP(model, device_ids=device_ids, process_group=pd.mesh.get_group("dp"))
    return model


def sq_norm(t: torch.Tensor, pd: ParallelDims) -> float:
    """Squared Frobenius norm of a (possibly tensor-parallel sharded) tensor, in float64."""
    return float(t.detach().double().pow(2).sum())
