"""The one place that joins or creates the process group and builds the (dp, tp) device mesh.

Works under every launcher: torchrun / torch's elastic launcher (RANK, WORLD_SIZE, MASTER_ADDR set),
srun (SLURM_PROCID / SLURM_NTASKS mapped to RANK / WORLD_SIZE), Ray Train (process group already
initialised), or a single plain process (no process group at all).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import Config, ConfigError


def _adopt_slurm_env() -> None:
    # srun-native launch: Slurm gives us ranks; the sbatch template exports MASTER_ADDR/PORT.
    if "RANK" not in os.environ and "SLURM_PROCID" in os.environ and "MASTER_ADDR" in os.environ:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ.get("SLURM_NTASKS", "1")
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ.setdefault("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1").split("(")[0])


def env_world_size() -> int:
    """World size of the surrounding launcher, or 1 when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    _adopt_slurm_env()
    return int(os.environ.get("WORLD_SIZE", "1")) if "MASTER_ADDR" in os.environ else 1


def resolve_device(cfg: Config, local_rank: int) -> torch.device:
    want = cfg.train.device
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("config key 'train.device' = 'cuda': no CUDA device is available")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass
class ParallelDims:
    dp: int
    tp: int
    rank: int
    world: int
    local_rank: int
    device: torch.device
    mesh: object | None  # torch DeviceMesh with axes ("dp", "tp"), None in a single process
    owns_group: bool  # we created the process group, so we destroy it

    @property
    def dp_rank(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor, axis: str | None = None) -> torch.Tensor:
        """Sum over all ranks (axis=None) or along one mesh axis ('dp' or 'tp'). In place."""
        if self.world == 1:
            return t
        group = None if axis is None else self.mesh.get_group(axis)
        if axis is not None and dist.get_world_size(group) == 1:
            return t
        dist.all_reduce(t, group=group)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def check_mesh(cfg: Config, world: int, local_world: int | None = None) -> None:
    """Raise ConfigError if parallel.dp x parallel.tp does not fit the launcher's world."""
    p = cfg.parallel
    if p.dp * p.tp != world:
        raise ConfigError(
            f"config keys 'parallel.dp' x 'parallel.tp' = {p.dp} x {p.tp} = {p.dp * p.tp} "
            f"must equal the number of processes ({world})"
        )
    if local_world is not None and (p.tp > local_world or local_world % p.tp != 0):
        raise ConfigError(
            f"config key 'parallel.tp' = {p.tp}: must divide the processes per node ({local_world}) "
            "so tensor-parallel groups stay inside a node"
        )


def setup(cfg: Config) -> ParallelDims:
    """Join (or create) the process group and build the mesh. Size-1 runs create nothing."""
    owns = False
    _adopt_slurm_env()
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif "MASTER_ADDR" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        rank, world = 0, 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in os.environ else None
    check_mesh(cfg, world, local_world)
    device = resolve_device(cfg, local_rank)

    if world > 1 and not dist.is_initialized():
        backend = cfg.parallel.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                device_id=device if device.type == "cuda" else None)
        owns = True

    mesh = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (cfg.parallel.dp, cfg.parallel.tp), mesh_dim_names=("dp", "tp"))
    return ParallelDims(cfg.parallel.dp, cfg.parallel.tp, rank, world, local_rank, device, mesh, owns)
