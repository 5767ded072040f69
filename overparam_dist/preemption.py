"""A request to checkpoint at once and stop with status `preempted` (rerunning the trial resumes it)."""

from __future__ import annotations

import signal
from pathlib import Path

from .parallel.distributed import World


class Preemption:
    """Two ways in: SIGUSR1 (Slurm's `--signal=B:USR1@...`, forwarded to the trial by slurm/trial.sbatch),
    when the trial runs in a main thread; and the file `run.preempt_file`, which a sweep driver creates
    for trials running inside Ray workers, where no signal handler can be installed. All ranks agree on
    the step to stop at (one tiny all-reduce per step, only when a process group exists).
    """

    def __init__(self, flag_file: str):
        self.flag = False
        self.flag_file = Path(flag_file) if flag_file else None
        self.previous = None
        try:
            self.previous = signal.signal(signal.SIGUSR1, self._handle)
            self.installed = True
        except ValueError:  # not the main thread (e.g. inside a Ray Tune function trainable)
            self.installed = False

    def _handle(self, signum, frame) -> None:
        self.flag = True

    def requested(self, world: World) -> bool:
        return world.any_rank(self.flag or (self.flag_file is not None and self.flag_file.exists()))

    def restore(self) -> None:
        if self.installed:
            signal.signal(signal.SIGUSR1, self.previous or signal.SIG_DFL)
