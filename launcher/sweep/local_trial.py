"""The fast path for a multi-process trial that fits one node: its parallel.dp x parallel.tp processes are local
processes started inside the Tune trial by torch's elastic launcher, the same code path as
`overparam train parallel.dp=2` (launcher/local.py), instead of a Ray Train worker group (24 s to start and
stop on 2 cores, bench/sweep_overhead.py). The trial's placement group is one bundle holding all its CPUs and
GPUs, and a bundle never spans nodes, so Ray places the whole trial on one node.

Rank 0 sends each logged row through a queue to the trainable, which reports it to Tune; the PID file names rank
0. A dead process fails the trial, and Tune retries it from its last checkpoint like any other trial.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

from overparam_dist.config import from_dict

_DONE = "__done__"


def write_pid(path: str) -> None:
    """<sweep>/.workers/<trial>.pid: the process that runs run_trial (rank 0), for operators and tests. Best effort:
    on a full or read-only disk it is skipped and the trial's own writes meet the disk's state (a raw OSError here
    failed the trial with a traceback instead)."""
    from overparam_dist.rundir import atomic_write

    with contextlib.suppress(OSError):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write(Path(path), f"{os.getpid()}\n")


def _rank(cfg_dict: dict, rows, pid_file: str) -> dict:
    """One local process of the trial (spawned: everything it needs comes as arguments)."""
    from overparam_dist.train import run_trial

    on_log = None
    if int(os.environ.get("RANK", "0")) == 0:
        write_pid(pid_file)
        on_log = rows.put
    return run_trial(from_dict(cfg_dict), on_log=on_log)


def run_local_processes(config: dict[str, Any], report) -> dict:
    """Run the trial in `config["workers"]` local processes; `report(row)` for every row rank 0 logs, from this
    thread (Tune's function trainable reports from its own thread). Returns rank 0's summary."""
    from ..local import spawn_local

    rows = multiprocessing.get_context("spawn").Queue()
    result: dict[str, Any] = {}

    def launch() -> None:
        try:
            # The bundle's CPUs per process, not each process taking all the node's cores.
            result["summary"] = spawn_local(config["workers"], _rank, config["cfg"], rows, config["pid_file"],
                                            threads=max(1, int(config["resources"]["cpus"])))[0]
        except BaseException as exc:  # re-raised in the trainable's thread below
            result["error"] = exc
        finally:
            rows.put(_DONE)

    thread = threading.Thread(target=launch, name="local-trial", daemon=True)
    thread.start()
    while (row := rows.get()) != _DONE:
        report(row)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["summary"]

