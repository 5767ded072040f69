"""Where a parameter's local block sits in its global 2-D weight: the one description of a shard that both
parallelism (which makes shards) and the metrics (which regenerate W_0 for exactly that block) use."""

from __future__ import annotations

import torch

from ..models.init import shape2d


class ShardView:
    """The local 2-D block of a (possibly tensor-parallel sharded) parameter and its offset in the global view."""

    def __init__(self, local2d: torch.Tensor, global_shape2d: tuple[int, int], row0: int, col0: int):
        self.local, self.global_shape, self.row0, self.col0 = local2d, global_shape2d, row0, col0


def plain_view(p: torch.Tensor) -> ShardView:
    """An unsharded parameter: its own global view."""
    shape = shape2d(p.shape)
    return ShardView(p.detach().reshape(shape), shape, 0, 0)
