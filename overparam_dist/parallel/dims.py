"""The parallel degrees of one trial, validated once: data parallel (dp) x tensor parallel (tp) = world.

The mesh is always read by axis name ("dp", "tp"), never as a 1-D list of ranks; a size-1 axis costs nothing.
Rank r sits at (dp_rank, tp_rank) = divmod(r, tp): the tp ranks of one replica are consecutive, so they stay
inside a node when processes fill nodes in rank order.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import Config, ConfigError


@dataclass(frozen=True)
class ParallelDims:
    dp: int = 1
    tp: int = 1

    def __post_init__(self):
        for key, v in (("parallel.dp", self.dp), ("parallel.tp", self.tp)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"config key '{key}' = {v!r}: must be an integer >= 1")

    @classmethod
    def from_config(cls, cfg: Config) -> ParallelDims:
        return cls(cfg.parallel.dp, cfg.parallel.tp)

    @property
    def world(self) -> int:
        """Processes of one trial: the one place dp x tp is computed."""
        return self.dp * self.tp

    def dp_rank(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def check_fits(self, world: int, local_world: int | None = None) -> None:
        """Raise ConfigError if the degrees do not fit the launcher's processes."""
        if self.world != world:
            raise ConfigError(
                f"config keys 'parallel.dp' x 'parallel.tp' = {self.dp} x {self.tp} = {self.world} "
                f"must equal the number of processes ({world})"
            )
        if local_world is not None and (self.tp > local_world or local_world % self.tp != 0):
            raise ConfigError(
                f"config key 'parallel.tp' = {self.tp}: must divide the processes per node ({local_world}) "
                "so tensor-parallel groups stay inside a node"
            )
