"""`overparam submit slurm [--trial] ...`: validate everything, render the batch script (scripts.py), submit it with
sbatch (or print it with --dry-run), and say how to watch the job."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from pathlib import Path

from overparam_dist.config import ConfigError, load_config
from overparam_dist.parallel.dims import ParallelDims
from overparam_dist.rundir import check_run_dir, run_dir

from ..sweep.multirun import looks_like_experiment
from ..sweep.spec import load_sweep
from .client import JOB_ID, slurm_cmd
from .options import SlurmOptions, add_submit_args
from .scripts import sbatch_argv, sweep_script, trial_script


def submit(ns: argparse.Namespace) -> int:
    """`overparam submit slurm`: validate, render, sbatch, print the job id and how to watch it."""
    args = SlurmOptions.from_args(ns)
    if not args.trial:
        return submit_sweep(args)
    from overparam_dist.data_files import check_available

    cfg = load_config(args.config, args.overrides)
    script, sdir = trial_script(args, cfg)  # Slurm options first: they need no torch import
    check_available(cfg)
    check_run_dir(cfg)
    if args.dry_run:
        return _dry_run(script, sdir)
    job_id, script_file = _sbatch(script, sdir)
    tasks = ParallelDims.from_config(cfg).world
    print(f"submitted Slurm job {job_id}: {tasks} task(s) on {args.nodes} node(s) "
          f"(parallel.dp={cfg.parallel.dp} parallel.tp={cfg.parallel.tp})")
    print(f"script:  {script_file}")
    print(f"log:     {sdir / (job_id + '.out')}")
    print(f"outputs: {run_dir(cfg)}/ (metrics.jsonl, summary.json)")
    print(f"watch:   overparam jobs status {job_id}   overparam jobs logs {job_id} [--follow]   "
          f"overparam jobs stop {job_id}")
    return 0


def submit_sweep(args: SlurmOptions) -> int:
    """`overparam submit slurm --config SWEEP.yaml`: a Ray cluster in one job, the sweep driver inside it."""
    sweep = _load_sweep(args)
    script, sdir = sweep_script(args, sweep)
    sweep.check_inputs()  # what the driver checks before Ray starts, checked here before anything is queued
    if args.dry_run:
        return _dry_run(script, sdir)
    job_id, script_file = _sbatch(script, sdir)
    done = sum(t.finished_summary() is not None for t in sweep.trials)
    what = (f"{len(sweep.trials)} trial(s)" if sweep.kind == "grid"
            else f"critical-width search over {len(sweep.trials)} candidate trial(s)")
    print(f"submitted Slurm job {job_id}: sweep {sweep.name}, {what}" + (f" ({done} finished earlier)" if done else "")
          + f", on a Ray cluster of {args.nodes} node(s)")
    print(f"script:  {script_file}")
    print(f"log:     {sdir / (job_id + '.out')}  (the Ray dashboard's ssh tunnel command appears there once Ray "
          "is up)")
    print(f"outputs: {sweep.dir}/ (results.csv, one directory per trial)"
          + ("; it exists: the job continues that sweep (--resume)" if sweep.dir.exists() else ""))
    print(f"watch:   overparam jobs status {job_id}   overparam jobs logs {job_id} [--follow]   "
          f"overparam jobs stop {job_id}")
    return 0


def _dry_run(script: str, sdir: Path) -> int:
    sys.stdout.write(script)
    sys.stdout.flush()
    print(f"(dry run: a submission writes this to {sdir}/<job id>.sbatch and runs "
          f"`{shlex.join(['sbatch', '--parsable', *sbatch_argv(sdir)])}` on it; "
          "nothing was submitted)", file=sys.stderr)
    return 0


def _sbatch(script: str, sdir: Path) -> tuple[str, Path]:
    """Submit the script; write it to <sdir>/<job id>.sbatch. Returns (job id, script file)."""
    created = sdir  # the outermost directory this submission creates: removed again if sbatch fails
    while not created.parent.exists():
        created = created.parent
    created = None if sdir.exists() else created
    sdir.mkdir(parents=True, exist_ok=True)  # Slurm opens the log there: it must exist before the job starts
    try:
        out = slurm_cmd(["sbatch", "--parsable", *sbatch_argv(sdir)], input=script, cwd=Path.cwd())
    except ConfigError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    job_id = out.strip().split(";")[0]
    if not JOB_ID.match(job_id):
        raise ConfigError(f"sbatch answered {out.strip()!r}, not a job id")
    script_file = sdir / f"{job_id}.sbatch"
    script_file.write_text(script)
    return job_id, script_file


def _load_sweep(args: SlurmOptions):
    """The sweep file, validated like `overparam sweep` does (every grid point's config)."""
    if args.config is None:
        raise ConfigError("submit slurm needs --config SWEEP.yaml (a sweep file, e.g. configs/sweep/quickstart.yaml)"
                          "; to submit one trial, add --trial")
    try:
        return load_sweep(args.config, args.overrides, runs_dir=args.runs_dir or "runs")
    except ConfigError as exc:
        msg = str(exc)
        if "unknown key" in msg and looks_like_experiment(args.config):
            msg += " (an experiment config? submit one trial with --trial)"
        raise ConfigError(msg) from None


def add_submit_parser(targets) -> argparse.ArgumentParser:
    """Add `slurm` to the targets of `overparam submit`."""
    p = targets.add_parser("slurm", help="submit to Slurm with sbatch: a sweep on a Ray cluster inside the job, "
                                         "or (--trial) one trial, srun-native")
    add_submit_args(p)
    p.set_defaults(fn=submit)
    return p
