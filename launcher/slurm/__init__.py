"""Slurm: `overparam submit slurm [--trial] ...` and `overparam jobs status|logs|stop JOB_ID` for Slurm job ids.

`--trial`: one trial as one batch job rendered from `slurm/trial.sbatch`: srun starts parallel.dp x parallel.tp
tasks, each runs `python -m launcher train ...` and joins the process group through the Slurm environment
(overparam_dist/parallel/distributed.py).

Without `--trial`, `--config` is a sweep file (configs/sweep/*.yaml, validated with launcher.sweep.spec.load_sweep): one
batch job rendered from `slurm/ray_sweep.sbatch` starts a Ray cluster on its nodes (head on the first, one worker
per other node) and runs `python -m launcher sweep --address <head> ...` as the driver inside the job; USR1 before
the time limit preempts the sweep (trials checkpoint and stop) and requeues the job, which resumes it.

Only the Slurm client commands are used (sbatch, scontrol, scancel; no sacct, which needs slurmdbd); torch is
imported only to validate a submission (data sets, run directories).

Templates use `{{name}}` placeholders. Every substituted value is shell-quoted with shlex.quote (lists: each item
quoted, joined by spaces), including values on `#SBATCH` lines, which sbatch itself unquotes the way a shell does.
Values that must be plain (numbers, job names) are validated before rendering, and no value may contain a newline.

Files of a submitted trial live next to its run directory, in `<run dir>.slurm/`: `<job id>.sbatch` (the exact
script that was submitted) and `<job id>.out` (the job's stdout+stderr, appended to across requeues). They are not
inside the run directory because a trial refuses to start in a non-empty directory that is not one of its runs.
A sweep's live next to the sweep's directory the same way: `<runs dir>/<sweep>.slurm/`.
"""

from __future__ import annotations

import argparse

# launcher/cli.py plugs backends in through three functions: add_submit_parser(targets) for `overparam submit`,
# owns_job_id(job_id) and jobs_command(action, job_id, args) for `overparam jobs status|logs|stop JOB_ID`.
from .jobs import FINISHED_STATES, cancel, job_info, job_logs, job_state, job_status, jobs_command, owns_job_id
from .options import SlurmOptions, time_limit_seconds
from .scripts import render
from .submit import add_submit_parser

__all__ = ["FINISHED_STATES", "SlurmOptions", "add_submit_parser", "cancel", "job_info", "job_logs", "job_state",
           "job_status", "jobs_command", "owns_job_id", "register", "render", "time_limit_seconds"]


def _cmd_jobs(args: argparse.Namespace) -> int:
    return jobs_command(args.action, args.job_id, args)


def register(subparsers) -> None:
    """A stand-alone `submit slurm ...` + `jobs status|logs|stop JOB_ID` (same arguments as launcher/cli.py's),
    for a parser that has neither `submit` nor `jobs`."""
    cls = getattr(subparsers, "_parser_class", argparse.ArgumentParser)
    s = subparsers.add_parser("submit", help="submit to a cluster")
    add_submit_parser(s.add_subparsers(dest="target", required=True, parser_class=cls))
    j = subparsers.add_parser("jobs", help="follow a submitted job: status, logs, stop")
    j.add_argument("action", choices=("status", "logs", "stop"))
    j.add_argument("job_id", metavar="JOB_ID")
    j.add_argument("--follow", "-f", action="store_true", help="logs: keep printing until the job ends")
    j.set_defaults(fn=_cmd_jobs)
