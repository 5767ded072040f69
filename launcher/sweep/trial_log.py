"""What a trial's own process writes to its log, which the Ray dashboard shows under the trial's actor: a line per
logged row, prefixed by the trial's label, and no W&B teardown traceback at its end."""

from __future__ import annotations

import sys

from overparam_dist.metrics.names import TRAIN_LOSS
from overparam_dist.sinks import run_label


def trial_label(config: dict) -> str:
    """<sweep>/<trial>: the trial's actor on the Ray dashboard, the prefix of its log lines, its W&B run name."""
    return run_label(config["cfg"]["wandb"]["group"], config["trial"])


def progress_printer(config: dict, report=None):
    """`report` (a Tune report, or None) that also prints each logged row to this process's log: the trial's
    actor log on the Ray dashboard then shows its progress."""
    label, steps = trial_label(config), config["cfg"]["train"]["steps"]

    def on_log(row: dict) -> None:
        loss = row.get(TRAIN_LOSS)
        print(f"[{label}] step {row.get('step')}/{steps}" + (f" train/loss {loss:.4g}" if loss is not None else ""),
              flush=True)
        if report is not None:
            report(row)

    return on_log


def quiet_requested_exits() -> None:
    """Once a trial has ended, Ray ends its actor with SIGTERM, and Ray's handler raises SystemExit wherever the main
    thread is. Inside a garbage-collection or weakref callback Python cannot raise it, and prints "Exception ignored
    in: ... Traceback ... SystemExit: 1" to the trial's log (seen on a loaded machine). That exit is the one Ray asked
    for, so it is not reported; every other exception Python cannot raise still is. Installed once per process, by
    the trial's own actor (a Train worker group's workers keep Python's default)."""
    if getattr(sys.unraisablehook, "quiet_requested_exits", False):
        return
    default = sys.unraisablehook

    def hook(unraisable) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            default(unraisable)

    hook.quiet_requested_exits = True
    sys.unraisablehook = hook


def stop_wandb_service() -> None:
    """Stop this process's W&B service now, while it still answers. Left to wandb's atexit hook, it is already
    gone when Ray ends the actor, and every trial's log ended with a ConnectionResetError traceback."""
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
