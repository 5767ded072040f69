"""The one place that joins or creates the process group and builds the (dp, tp) device mesh.

Works under every launcher: torchrun / torch's elastic launcher (RANK, WORLD_SIZE, MASTER_ADDR set),
srun (SLURM_PROCID / SLURM_NTASKS mapped to RANK / WORLD_SIZE), Ray Train (process group already
initialised), or a single plain process (no process group at all).

A single process gets no process group and no DeviceMesh on purpose: the default group is process-global
state (a notebook or a Ray actor running several trials in turn would have to share it), and a collective
per step costs time for nothing. Instead every collective below is a no-op on a size-1 group, so callers
never write `if world > 1`.
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..config import Config, ConfigError
from .dims import ParallelDims
from .stores import bound_stores, local_transport_on_loopback


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


def check_backend(cfg: Config) -> None:
    """nccl needs CUDA here: one line before any process starts (a login node may submit nccl jobs elsewhere)."""
    if cfg.parallel.backend == "nccl" and not torch.cuda.is_available():
        raise ConfigError("config key 'parallel.backend' = 'nccl': no CUDA device is available here; "
                          "use gloo (or auto, which picks gloo on CPU)")


@dataclass
class World:
    """The processes of one trial as this rank sees them: its place in the mesh, its device, the collectives."""

    dims: ParallelDims
    rank: int
    local_rank: int
    device: torch.device
    mesh: object | None  # torch DeviceMesh with axes ("dp", "tp"); None in a single process
    owns_group: bool  # we created the process group, so we destroy it
    nodes: list[str]  # node of every global rank (node_id), recorded as derived.world.nodes

    @property
    def dp(self) -> int:
        return self.dims.dp

    @property
    def tp(self) -> int:
        return self.dims.tp

    @property
    def size(self) -> int:
        return self.dims.world

    @property
    def dp_rank(self) -> int:
        return self.dims.dp_rank(self.rank)

    @property
    def tp_rank(self) -> int:
        return self.dims.tp_rank(self.rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def group(self, axis: str):
        """The process group of one mesh axis ('dp' or 'tp'), or None when that axis has size 1."""
        if self.mesh is None or getattr(self.dims, axis) == 1:
            return None
        return self.mesh.get_group(axis)

    def all_reduce_sum(self, t: torch.Tensor, axis: str | None = None) -> torch.Tensor:
        """Sum over all ranks (axis=None) or along one mesh axis ('dp' or 'tp'). In place."""
        if self.size == 1:
            return t
        if axis is None:
            dist.all_reduce(t)
        elif (group := self.group(axis)) is not None:
            dist.all_reduce(t, group=group)
        return t

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if self.size == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def from_main(self, value: int) -> int:
        """Rank 0's integer, on every rank."""
        if self.size == 1:
            return value
        t = torch.tensor([value if self.is_main else 0], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t.item())

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def node_id() -> str:
    """This process's node, from what its launcher says: Ray (OVERPARAM_NODE), Slurm (SLURM_NODEID) or torchrun
    (GROUP_RANK, the agent's node rank). Never the hostname alone: two nodes may share a host."""
    for var, prefix in (("OVERPARAM_NODE", ""), ("SLURM_NODEID", "node"), ("GROUP_RANK", "node")):
        if os.environ.get(var):
            return prefix + os.environ[var]
    return socket.gethostname()


def _check_tp_inside_nodes(nodes: list[str], tp: int) -> None:
    """A tensor-parallel group split over nodes would send every layer's all-reduce over the network."""
    for first in range(0, len(nodes), tp):
        spans = sorted(set(nodes[first:first + tp]))
        if len(spans) > 1:
            raise ConfigError(f"the tensor-parallel group of ranks {first}-{first + tp - 1} spans nodes "
                              f"{', '.join(spans)}: every group of parallel.tp consecutive ranks must sit in one node")


def setup(cfg: Config) -> World:
    """Join (or create) the process group and build the mesh. Size-1 runs create nothing."""
    dims = ParallelDims.from_config(cfg)
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
    dims.check_fits(world, local_world)
    check_backend(cfg)
    device = resolve_device(cfg, local_rank)

    if world > 1 and not dist.is_initialized():
        backend = cfg.parallel.backend
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        if local_world == world:  # every rank on this host: its transport on loopback too (stores.py)
            local_transport_on_loopback()
        with bound_stores():  # srun's rank 0 creates the store: on MASTER_ADDR alone, not every interface
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                                    device_id=device if device.type == "cuda" else None)
        owns = True

    mesh = None
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (dims.dp, dims.tp), mesh_dim_names=("dp", "tp"))
    nodes = [node_id()]
    if world > 1:
        nodes = [None] * world
        dist.all_gather_object(nodes, node_id())
    try:
        _check_tp_inside_nodes(nodes, dims.tp)
    except ConfigError:
        if owns:
            dist.destroy_process_group()
        raise
    return World(dims, rank, local_rank, device, mesh, owns, nodes)
