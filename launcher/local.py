"""Run one trial here: in this process, or in dp*tp local processes started with torch's own launcher."""

from __future__ import annotations

import uuid

from overparam_dist.config import Config, to_dict
from overparam_dist.parallel.mesh import check_mesh, env_world_size


def _worker(cfg_dict: dict) -> dict:
    from omegaconf import OmegaConf

    from overparam_dist.config import Config as Schema
    from overparam_dist.train import run_trial

    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Schema), cfg_dict))
    return run_trial(cfg)


def spawn_local(nprocs: int, fn, *args) -> dict:
    """Run fn(*args) in nprocs local processes with torch's elastic launcher (a standalone rendezvous
    on a free loopback port, as `torchrun --standalone`); returns {rank: return value}."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs,
                          run_id=f"overparam-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1, start_method="spawn")
    return elastic_launch(launch, fn)(*args)


def launch_trial(cfg: Config) -> dict:
    """Join a surrounding launcher (torchrun, srun, Ray) if there is one, else start processes."""
    world = env_world_size()
    procs = cfg.parallel.dp * cfg.parallel.tp
    if world > 1 or procs == 1:
        check_mesh(cfg, world)
        from overparam_dist.train import run_trial

        return run_trial(cfg)

    return spawn_local(procs, _worker, to_dict(cfg))[0]

__all__ = ["launch_trial", "spawn_local"]
