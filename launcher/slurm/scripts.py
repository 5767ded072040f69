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

import math
import os
import re
import shlex
import shutil
import sys
from pathlib import Path

from overparam_dist.config import Config, ConfigError
from overparam_dist.parallel.dims import ParallelDims
from overparam_dist.rundir import run_dir

from ..sweep.spec import trial_demand
from .options import SlurmOptions, positive

TEMPLATES = Path(__file__).resolve().parents[2] / "slurm"
TRIAL_TEMPLATE = TEMPLATES / "trial.sbatch"
SWEEP_TEMPLATE = TEMPLATES / "ray_sweep.sbatch"
SLURM_SUFFIX = ".slurm"  # <run dir>.slurm/ holds the scripts and logs of a trial's jobs

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def _quote(v: str | int) -> str:
    s = str(v)
    if any(c in s for c in "\n\r\0"):
        raise ConfigError(f"value {s!r} for the Slurm script holds a newline or NUL character")
    return shlex.quote(s)


def render(template: str, values: dict[str, str | int | list[str]],
           sbatch_blocks: dict[str, list[str]] | None = None) -> str:
    """Fill a template: each `{{name}}` becomes shlex.quote(value) (a list: its items quoted, space-joined).

    A placeholder in `sbatch_blocks` must stand alone on its line; that line becomes one `#SBATCH <option>` line
    per option (each option quoted the same way; sbatch unquotes #SBATCH lines like a shell), or vanishes when
    there are none. Raises ConfigError for a placeholder without a value, an unused value, or a newline in a value.
    """
    blocks = sbatch_blocks or {}
    used: set[str] = set()

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in values:
            raise ConfigError(f"Slurm template placeholder '{{{{{name}}}}}' has no value")
        used.add(name)
        v = values[name]
        return " ".join(_quote(x) for x in v) if isinstance(v, list) else _quote(v)

    parts: list[str] = []  # one pass, line by line: substituted text is never scanned again
    for line in template.splitlines(keepends=True):
        m = re.fullmatch(r"\{\{([a-z_]+)\}\}\n?", line)
        if m and m.group(1) in blocks:
            used.add(m.group(1))
            parts += [f"#SBATCH {_quote(opt)}\n" for opt in blocks[m.group(1)]]
        else:
            parts.append(_PLACEHOLDER.sub(sub, line))
    out = "".join(parts)
    unused = (set(values) | set(blocks)) - used
    if unused:
        raise ConfigError(f"Slurm template has no placeholder for {sorted(unused)}")
    return out


def _job_name(args: SlurmOptions, cfg: Config) -> str:
    if args.check_job_name() is not None:
        return args.job_name
    base = run_dir(cfg).name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-") or "trial"
    return ("op-" + safe)[:64]


def slurm_dir(cfg: Config) -> Path:
    """Absolute directory of a trial's Slurm scripts and logs: `<run dir>.slurm/`."""
    out = run_dir(cfg)
    d = out.parent / (out.name + SLURM_SUFFIX)
    return d if d.is_absolute() else Path.cwd() / d


def _check_path(what: str, path: Path) -> Path:
    s = str(path)
    if any(ord(c) < 32 for c in s):
        raise ConfigError(f"{what} '{s}' holds control characters")
    if "%" in s:  # Slurm would expand %j, %u, ... in it
        raise ConfigError(f"{what} '{s}' holds '%', which Slurm expands in file names; choose another run.name/run.dir")
    return path


def sbatch_argv(sdir: Path) -> list[str]:
    """Options passed to sbatch as arguments, not as #SBATCH lines: those that carry a user-controlled path.

    sbatch reads #SBATCH lines by its own rules (a backslash escapes even inside single quotes), so no shell
    quoting protects a value there; an argument reaches sbatch whole. Every other #SBATCH value is an integer
    or matches a strict pattern for its option (options.py).
    """
    return [f"--output={sdir / '%j.out'}"]


def _template(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"Slurm template '{path}' cannot be read: {exc.strerror}") from None


def trial_script(args: SlurmOptions, cfg: Config) -> tuple[str, Path]:
    """Render the batch script of one trial. Returns (script, slurm dir). Pure: writes nothing."""
    for flag in ("cpus_per_node", "runs_dir", "ray_port", "ray_auth"):
        if getattr(args, flag, None) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} is for sweeps (without --trial)")
    nodes = positive("--nodes", args.nodes)
    cpus = positive("--cpus-per-task", 1 if args.cpus_per_task is None else args.cpus_per_task)
    gpus = positive("--gpus-per-node", args.gpus_per_node, minimum=0)
    signal_s = positive("--signal-seconds", args.signal_seconds)
    tasks = ParallelDims.from_config(cfg).world
    if tasks % nodes:
        raise ConfigError(f"parallel.dp x parallel.tp = {tasks} tasks do not spread evenly over --nodes {nodes}")
    per_node = tasks // nodes
    if per_node % cfg.parallel.tp:
        raise ConfigError(f"config key 'parallel.tp' = {cfg.parallel.tp}: must divide the tasks per node "
                          f"({per_node}) so tensor-parallel groups stay inside a node")
    if gpus and per_node > gpus:
        raise ConfigError(f"{per_node} tasks per node but --gpus-per-node {gpus}: one GPU per task at most "
                          "(raise --nodes or --gpus-per-node)")

    options = args.sbatch_options(gpus, signal_s)
    sdir = _check_path("Slurm directory", slurm_dir(cfg))
    workdir = _check_path("working directory", Path.cwd())
    train_args: list[str] = []
    if args.config is not None:
        train_args += ["--config", str(Path(args.config).resolve())]
    train_args += list(args.overrides)

    values = {
        "job_name": _job_name(args, cfg),
        "nodes": nodes,
        "tasks_per_node": per_node,
        "cpus_per_task": cpus,
        "signal_seconds": signal_s,
        "workdir": str(workdir),
        "python": sys.executable,
        "train_args": train_args,
    }
    return render(_template(TRIAL_TEMPLATE), values, {"sbatch_options": options}), sdir


def sweep_slurm_dir(sweep) -> Path:
    """Absolute directory of a sweep's Slurm scripts and logs: `<runs dir>/<sweep>.slurm/`."""
    return sweep.runs_dir.absolute() / (sweep.name + SLURM_SUFFIX)


def _ray_executable() -> Path:
    ray = Path(sys.executable).parent / "ray"
    if ray.is_file() and os.access(ray, os.X_OK):
        return ray
    found = shutil.which("ray")
    if found is None:
        raise ConfigError(f"no 'ray' command next to {sys.executable} or on PATH: install ray[default] in this "
                          "environment (the job starts its Ray cluster with it)")
    return Path(found)


def sweep_script(args: SlurmOptions, sweep) -> tuple[str, Path]:
    """Render the batch script of a sweep (a Ray cluster on the allocation + the sweep driver).
    Returns (script, slurm dir). Pure: writes nothing."""
    if args.cpus_per_task is not None:
        raise ConfigError("--cpus-per-task is for --trial; a sweep gives Ray --cpus-per-node CPUs on each node")
    nodes = positive("--nodes", args.nodes)
    gpus = positive("--gpus-per-node", args.gpus_per_node, minimum=0)
    signal_s = positive("--signal-seconds", args.signal_seconds)
    res = sweep.resources
    demand = [trial_demand(t, res) for t in sweep.trials]
    need_cpu = max((c for c, _ in demand), default=res["cpus"])
    need_gpu = max((g for _, g in demand), default=res["gpus"])
    if args.cpus_per_node is None:
        cpus = max(1, math.ceil(need_cpu - 1e-9))  # the largest trial fits on one node
    else:
        cpus = positive("--cpus-per-node", args.cpus_per_node)
    if res["cpus"] > cpus + 1e-9 or res["gpus"] > gpus + 1e-9:
        raise ConfigError(f"one trial process needs {res['cpus']:g} CPUs and {res['gpus']:g} GPUs (sweep "
                          f"'resources'), more than a node gets (--cpus-per-node {cpus}, --gpus-per-node {gpus})")
    if need_cpu > cpus * nodes + 1e-9 or need_gpu > gpus * nodes + 1e-9:
        raise ConfigError(f"the largest trial needs {need_cpu:g} CPUs and {need_gpu:g} GPUs, more than the job's "
                          f"Ray cluster has ({nodes} node(s) x {cpus} CPUs x {gpus} GPUs): raise --nodes, "
                          "--cpus-per-node or --gpus-per-node")
    port = "" if args.ray_port is None else args.ray_port
    if args.ray_port is not None and not 1024 <= args.ray_port <= 65535 - 4:
        raise ConfigError(f"--ray-port {args.ray_port}: must be in 1024..65531 (it and the next 4 ports are used)")
    job_name = args.check_job_name() or ("op-" + sweep.name)[:64]

    options = args.sbatch_options(gpus, signal_s)
    sdir = _check_path("Slurm directory", sweep_slurm_dir(sweep))
    workdir = _check_path("working directory", Path.cwd())
    sweep_args = ["--config", str(Path(args.config).resolve()), "--runs-dir", str(sweep.runs_dir.absolute()),
                  *args.overrides]
    values = {
        "job_name": job_name,
        "nodes": nodes,
        "cpus_per_node": cpus,
        "gpus_per_node": gpus,
        "signal_seconds": signal_s,
        "workdir": str(workdir),
        "ray": str(_ray_executable()),
        "python": sys.executable,
        "sweep_dir": str(sweep.dir.absolute()),
        "slurm_dir": str(sdir),
        "ray_port": port,
        "ray_auth": args.ray_auth or "token",
        "sweep_args": sweep_args,
    }
    return render(_template(SWEEP_TEMPLATE), values, {"sbatch_options": options}), sdir
