"""Preempting a running sweep: SIGUSR1 to the driver (Slurm's --signal, forwarded by slurm/ray_sweep.sbatch, or
`kill -USR1`) creates runs/<sweep>/.preempt, the file every trial watches as its run.preempt_file."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

from .spec import PREEMPT_FILE, Sweep

_preempt_signalled = False  # set by the SIGUSR1 handler of this process (the file is the flag the trials see)
_preempt_handler = None  # the SIGUSR1 handler while a sweep runs (Tune's own replaces it: see _callback.setup)


def preempt_requested(sweep: Sweep) -> bool:
    return _preempt_signalled or (sweep.dir / PREEMPT_FILE).exists()


@contextlib.contextmanager
def preemption_handler(sweep: Sweep) -> Iterator[None]:
    """While the sweep runs, SIGUSR1 (Slurm's --signal, forwarded by slurm/ray_sweep.sbatch, or `kill -USR1`)
    preempts it: create runs/<sweep>/.preempt. Only in the main thread (elsewhere the file alone works)."""
    global _preempt_signalled, _preempt_handler
    _preempt_signalled = False
    flag = sweep.dir / PREEMPT_FILE

    def handle(signum, frame) -> None:
        global _preempt_signalled
        _preempt_signalled = True
        try:
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()
        except OSError:
            pass
        os.write(2, f"[{sweep.name}] SIGUSR1: preempting: running trials checkpoint and stop, no new trial "
                    f"starts\n".encode())

    try:
        previous = signal.signal(signal.SIGUSR1, handle)
    except ValueError:  # not the main thread
        yield
        return
    _preempt_handler = handle
    try:
        yield
    finally:
        _preempt_handler = None
        signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)


def reclaim_usr1() -> None:
    """tune.run() installs its own SIGUSR1 handler (it ends the whole run at once, killing the trials without a
    checkpoint); put ours back. Called from the Tune callback's setup(), which runs after Tune's."""
    if _preempt_handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _preempt_handler)
