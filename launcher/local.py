"""Run one trial here: in this process, or in parallel.dp x parallel.tp local processes (torch's own launcher)."""

from __future__ import annotations

import logging
import os
import uuid

from overparam_dist.config import Config, ConfigError, from_dict, to_dict
from overparam_dist.parallel.stores import bound_stores

_CONFIG_ERROR = "ConfigError: "


def _worker(cfg_dict: dict) -> dict:
    from overparam_dist.train import run_trial

    try:
        return run_trial(from_dict(cfg_dict))
    except ConfigError as exc:  # reaches the parent as "ConfigError: <line>" (see spawn_local)
        raise ConfigError(str(exc)) from None


# Started by a fork server that imported these once: each process then starts without importing torch and the
# library itself (about 3.4 s of a 2-core machine's time per process; bench/sweep_overhead.py). The server is a
# fresh process (spawned, no threads), so forking it is safe, and it lives as long as this process: later trials
# of a reused Ray actor fork from it at once.
PRELOAD = ["torch", "overparam_dist.train"]


def _start_fork_server() -> None:
    """Start the fork server now, before this process imports torch itself: the two imports then overlap (this
    module imports no torch at its top for that reason)."""
    import multiprocessing.forkserver

    multiprocessing.set_forkserver_preload(PRELOAD)  # only read when the fork server starts
    multiprocessing.forkserver.ensure_running()  # returns at once; the server imports PRELOAD on its own


def _threads_per_process(nprocs: int) -> int:
    """This host's cores shared out over the processes (OMP_NUM_THREADS, when set, wins). torchrun sets
    OMP_NUM_THREADS=1 for several processes; torch's launcher API does not, and each process would then run as
    many threads as there are cores: on 2 cores a tp=4 CNN trial took 63 s instead of 8 s."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)  # macOS
    return max(1, cores // nprocs)


def _with_threads(threads: int, fn, *args):
    import torch

    torch.set_num_threads(threads)  # the forked process inherits the server's thread count, not this process's
    return fn(*args)


def spawn_local(nprocs: int, fn, *args, threads: int | None = None) -> dict:
    """Run fn(*args) in nprocs local processes with torch's elastic launcher (a standalone rendezvous
    on a free loopback port, as `torchrun --standalone`), each with `threads` intra-op threads (default: the
    cores shared out); returns {rank: return value}."""
    _start_fork_server()
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs,
                          run_id=f"overparam-{uuid.uuid4().hex[:8]}", rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          start_method="forkserver", local_addr="127.0.0.1")  # the workers' store: this host alone
    # A failed worker's traceback (and its siblings' SIGTERM) are re-raised below, or become one line.
    logs = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.CRITICAL)
    try:
        with bound_stores():  # on loopback only (parallel/stores.py)
            return elastic_launch(launch, _with_threads)(threads or _threads_per_process(nprocs), fn, *args)
    except ChildFailedError as exc:
        for _, failure in sorted(exc.failures.items()):
            text = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
            if text.startswith(_CONFIG_ERROR):  # bad input found inside a worker: the same one line as here
                raise ConfigError(text[len(_CONFIG_ERROR):]) from None
        # Not re-raised as it is: a ChildFailedError cannot be unpickled (its __init__ takes two arguments), so a
        # Ray sweep's trial failed with "TypeError: ChildFailedError.__init__() missing 1 required positional
        # argument" instead of the cause. Its text, root cause last (what a sweep's error column keeps), is kept.
        raise RuntimeError(f"{exc}\n{_root_cause(exc)}") from None
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _root_cause(exc) -> str:
    """One line: which local process failed first, and how."""
    rank, failure = exc.get_first_failure()
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        text = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
        how = f"exited with code {failure.exitcode}" + (f": {text.strip().splitlines()[0]}" if text.strip() else "")
    return f"local process rank {rank} (pid {failure.pid}) {how}"


def launch_trial(cfg: Config) -> dict:
    """Join a surrounding launcher (torchrun, srun, Ray) if there is one, else start processes."""
    from overparam_dist.parallel.dims import ParallelDims
    from overparam_dist.parallel.distributed import env_world_size

    world = env_world_size()
    dims = ParallelDims.from_config(cfg)
    if world > 1 or dims.world == 1:
        dims.check_fits(world)
        from overparam_dist.train import run_trial

        return run_trial(cfg)

    return spawn_local(dims.world, _worker, to_dict(cfg))[0]

__all__ = ["launch_trial", "spawn_local"]
