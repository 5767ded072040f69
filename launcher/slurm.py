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
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from overparam_dist.config import Config, ConfigError, load_config, run_dir

TEMPLATES = Path(__file__).resolve().parents[1] / "slurm"
TRIAL_TEMPLATE = TEMPLATES / "trial.sbatch"
SWEEP_TEMPLATE = TEMPLATES / "ray_sweep.sbatch"
SLURM_SUFFIX = ".slurm"  # <run dir>.slurm/ holds the scripts and logs of a trial's jobs

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$")
RAY_AUTH_MODES = ("token", "disabled")
_SLURM_CMD_TIMEOUT = 120  # s; an unreachable controller makes sbatch give up after ~10 s, scontrol after ~20 s


# ------------------------------------------------------------------------------------------------ templating
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


# ------------------------------------------------------------------------------------------------ arguments
def add_submit_args(p: argparse.ArgumentParser) -> None:
    """Options of `overparam submit slurm`."""
    p.add_argument("--config", help="a sweep file (configs/sweep/*.yaml; with --trial: an experiment YAML merged "
                                     "over the defaults, as for `overparam train`)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep keys or trial config keys, as for `overparam sweep` (with --trial: config overrides)")
    p.add_argument("--trial", action="store_true",
                   help="submit ONE trial (srun starts parallel.dp x parallel.tp tasks; no Ray)")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes (default 1); a sweep runs one Ray node on each, a trial spreads its tasks evenly")
    p.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (default 0: CPU, gloo)")
    p.add_argument("--cpus-per-task", type=int, default=None,
                   help="--trial: CPUs per task (default 1); sets OMP_NUM_THREADS")
    p.add_argument("--cpus-per-node", type=int, default=None,
                   help="sweep: CPUs per node given to Ray (--num-cpus; default: what the largest trial needs)")
    p.add_argument("--runs-dir", default=None, help="sweep: where runs/<sweep>/ goes (default: ./runs)")
    p.add_argument("--ray-port", type=int, default=None,
                   help="sweep: Ray's GCS port on the head; the dashboard, client, agent and metrics ports follow "
                        "it (+1..+4). Default: 20000 + 8 x (job id mod 1000)")
    p.add_argument("--ray-auth", choices=RAY_AUTH_MODES, default=None,
                   help="sweep: Ray token authentication inside the job (default token: the user's token, else "
                        "one per job; disabled: anyone who reaches the ports may use the cluster)")
    p.add_argument("--mem", help="memory per node, e.g. 16G (default: the cluster's DefMemPerCPU x CPUs)")
    p.add_argument("--time", help="time limit: MIN, H:M:S, D-H, D-H:M, D-H:M:S (default: the partition's)")
    p.add_argument("--signal-seconds", type=int, default=120,
                   help="send USR1 this many seconds before the time limit; the job then requeues itself "
                        "(default 120; Slurm may send it up to 60 s earlier)")
    p.add_argument("--partition", help="Slurm partition")
    p.add_argument("--account", help="Slurm account")
    p.add_argument("--qos", help="Slurm QOS")
    p.add_argument("--constraint", help="node features, e.g. 'a100&ib'")
    p.add_argument("--job-name", help="Slurm job name (default: op-<run name>, made safe)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="--OPTION[=VALUE]",
                   help="extra sbatch option, repeatable; write it with '=': --sbatch-arg=--exclusive")
    p.add_argument("--dry-run", action="store_true",
                   help="print the exact script a submission would write and submit nothing")


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if value is None or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def _plain(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not value.strip() or any(ord(c) < 32 for c in value):
        raise ConfigError(f"{name} {value!r}: empty or holds control characters")
    return value


def time_limit_seconds(value: str) -> int | None:
    """Seconds of a Slurm --time value (None for UNLIMITED/INFINITE); ConfigError for anything else."""
    if value.upper() in ("UNLIMITED", "INFINITE"):
        return None
    m = _TIME.match(value)
    if not m:
        raise ConfigError(f"--time {value!r}: use MIN, MIN:SEC, H:M:S, D-H, D-H:M or D-H:M:S")
    d, a, b, c = m.groups()
    if d is None:  # MIN | MIN:SEC | H:M:S
        if b is None:
            return int(a) * 60
        if c is None:
            return int(a) * 60 + int(b)
        return int(a) * 3600 + int(b) * 60 + int(c)
    return int(d) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)


def _job_name(args: argparse.Namespace, cfg: Config) -> str:
    if args.job_name is not None:
        if not _JOB_NAME.match(args.job_name):
            raise ConfigError(f"--job-name {args.job_name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                              "(starting with a letter or digit)")
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


# ------------------------------------------------------------------------------------------------ trial script
def trial_script(args: argparse.Namespace, cfg: Config) -> tuple[str, Path]:
    """Render the batch script of one trial. Returns (script, slurm dir). Pure: writes nothing."""
    for flag in ("cpus_per_node", "runs_dir", "ray_port", "ray_auth"):
        if getattr(args, flag, None) is not None:
            raise ConfigError(f"--{flag.replace('_', '-')} is for sweeps (without --trial)")
    nodes = _positive("--nodes", args.nodes)
    cpus = _positive("--cpus-per-task", 1 if args.cpus_per_task is None else args.cpus_per_task)
    gpus = _positive("--gpus-per-node", args.gpus_per_node, minimum=0)
    signal_s = _positive("--signal-seconds", args.signal_seconds)
    tasks = cfg.parallel.dp * cfg.parallel.tp
    if tasks % nodes:
        raise ConfigError(f"parallel.dp x parallel.tp = {tasks} tasks do not spread evenly over --nodes {nodes}")
    per_node = tasks // nodes
    if per_node % cfg.parallel.tp:
        raise ConfigError(f"config key 'parallel.tp' = {cfg.parallel.tp}: must divide the tasks per node "
                          f"({per_node}) so tensor-parallel groups stay inside a node")
    if gpus and per_node > gpus:
        raise ConfigError(f"{per_node} tasks per node but --gpus-per-node {gpus}: one GPU per task at most "
                          "(raise --nodes or --gpus-per-node)")

    options = _sbatch_options(args, gpus, signal_s)
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
        "log": str(sdir / "%j.out"),
        "signal_seconds": signal_s,
        "workdir": str(workdir),
        "python": sys.executable,
        "train_args": train_args,
    }
    return render(_template(TRIAL_TEMPLATE), values, {"sbatch_options": options}), sdir


def _template(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"Slurm template '{path}' cannot be read: {exc.strerror}") from None


def _sbatch_options(args: argparse.Namespace, gpus: int, signal_s: int) -> list[str]:
    """The optional #SBATCH lines shared by trial and sweep jobs, validated."""
    options: list[str] = []
    if gpus:
        options.append(f"--gpus-per-node={gpus}")
    if args.mem is not None:
        if not _MEM.match(args.mem):
            raise ConfigError(f"--mem {args.mem!r}: use a number of megabytes or a number with K, M, G or T")
        options.append(f"--mem={args.mem}")
    if args.time is not None:
        limit = time_limit_seconds(args.time)
        if limit is not None and signal_s >= limit:
            raise ConfigError(f"--signal-seconds {signal_s} must be shorter than the time limit --time {args.time}")
        options.append(f"--time={args.time}")
    for flag in ("partition", "account", "qos", "constraint"):
        value = _plain(f"--{flag}", getattr(args, flag))
        if value is not None:
            options.append(f"--{flag}={value}")
    for extra in args.sbatch_arg:
        _plain("--sbatch-arg", extra)
        if not re.match(r"^--?[A-Za-z]", extra):
            raise ConfigError(f"--sbatch-arg {extra!r}: must be an sbatch option, e.g. --exclusive or --mail-type=END")
        options.append(extra)
    return options


# ------------------------------------------------------------------------------------------------ sweep script
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


def sweep_script(args: argparse.Namespace, sweep) -> tuple[str, Path]:
    """Render the batch script of a sweep (a Ray cluster on the allocation + the sweep driver).
    Returns (script, slurm dir). Pure: writes nothing."""
    from .sweep.spec import trial_demand

    if args.cpus_per_task is not None:
        raise ConfigError("--cpus-per-task is for --trial; a sweep gives Ray --cpus-per-node CPUs on each node")
    nodes = _positive("--nodes", args.nodes)
    gpus = _positive("--gpus-per-node", args.gpus_per_node, minimum=0)
    signal_s = _positive("--signal-seconds", args.signal_seconds)
    res = sweep.resources
    demand = [trial_demand(t, res) for t in sweep.trials]
    need_cpu = max((c for c, _ in demand), default=res["cpus"])
    need_gpu = max((g for _, g in demand), default=res["gpus"])
    if args.cpus_per_node is None:
        cpus = max(1, math.ceil(need_cpu - 1e-9))  # the largest trial fits on one node
    else:
        cpus = _positive("--cpus-per-node", args.cpus_per_node)
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
    if args.job_name is not None:
        if not _JOB_NAME.match(args.job_name):
            raise ConfigError(f"--job-name {args.job_name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                              "(starting with a letter or digit)")
        job_name = args.job_name
    else:
        job_name = ("op-" + sweep.name)[:64]

    options = _sbatch_options(args, gpus, signal_s)
    sdir = _check_path("Slurm directory", sweep_slurm_dir(sweep))
    workdir = _check_path("working directory", Path.cwd())
    sweep_args = ["--config", str(Path(args.config).resolve()), "--runs-dir", str(sweep.runs_dir.absolute()),
                  *args.overrides]
    values = {
        "job_name": job_name,
        "nodes": nodes,
        "cpus_per_node": cpus,
        "gpus_per_node": gpus,
        "log": str(sdir / "%j.out"),
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


def _load_sweep(args: argparse.Namespace):
    """The sweep file, validated like `overparam sweep` does (every grid point's config)."""
    from .sweep.spec import load_sweep

    if args.config is None:
        raise ConfigError("submit slurm needs --config SWEEP.yaml (a sweep file, e.g. configs/sweep/quickstart.yaml)"
                          "; to submit one trial, add --trial")
    try:
        return load_sweep(args.config, args.overrides, runs_dir=args.runs_dir or "runs")
    except ConfigError as exc:
        msg = str(exc)
        if "unknown key" in msg and _looks_like_experiment(args.config):
            msg += " (an experiment config? submit one trial with --trial)"
        raise ConfigError(msg) from None


def _looks_like_experiment(path: str) -> bool:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    sections = {"seed", "model", "data", "train", "metrics", "parallel", "checkpoint", "run", "wandb"}
    return isinstance(data, dict) and bool(data) and set(data) <= sections


# ------------------------------------------------------------------------------------------------ slurm commands
def _slurm_cmd(argv: list[str], *, input: str | None = None, cwd: Path | None = None) -> str:
    """Run a Slurm client command; its failure becomes one clear ConfigError line. Returns stdout."""
    exe = shutil.which(argv[0])
    if exe is None:
        raise ConfigError(f"'{argv[0]}' not found on PATH: the Slurm client commands are not installed here "
                          "(on a single machine, `slurm/local-cluster.sh start` sets up a test cluster)")
    conf = os.environ.get("SLURM_CONF")
    if conf and not Path(conf).is_file():
        raise ConfigError(f"SLURM_CONF='{conf}' does not exist")
    try:
        res = subprocess.run([exe, *argv[1:]], input=input, cwd=cwd, capture_output=True, text=True,
                             timeout=_SLURM_CMD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{argv[0]} did not answer within {_SLURM_CMD_TIMEOUT} s: is the Slurm controller up?") \
            from None
    if res.returncode != 0:
        raise ConfigError(_slurm_error(argv[0], res.stderr or res.stdout))
    return res.stdout


def _slurm_error(cmd: str, text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    msg = errors[-1] if errors else f"{cmd} failed"
    msg = re.sub(r"^(\S+: )?(error|fatal): ", "", msg)
    if "Unable to contact slurm controller" in msg or "connect failure" in msg.lower():
        msg += " (is slurmctld running? on one machine: slurm/local-cluster.sh status)"
    return f"{cmd}: {msg}"


def submit(args: argparse.Namespace) -> int:
    """`overparam submit slurm`: validate, render, sbatch, print the job id and how to watch it."""
    if not args.trial:
        return submit_sweep(args)
    from overparam_dist.data import check_available

    cfg = load_config(args.config, args.overrides)
    script, sdir = trial_script(args, cfg)  # Slurm options first: they need no torch import
    check_available(cfg)
    _check_run_dir(cfg)
    if args.dry_run:
        return _dry_run(script, sdir)
    job_id, script_file = _sbatch(script, sdir)
    tasks = cfg.parallel.dp * cfg.parallel.tp
    print(f"submitted Slurm job {job_id}: {tasks} task(s) on {args.nodes} node(s) "
          f"(parallel.dp={cfg.parallel.dp} parallel.tp={cfg.parallel.tp})")
    print(f"script:  {script_file}")
    print(f"log:     {sdir / (job_id + '.out')}")
    print(f"outputs: {run_dir(cfg)}/ (metrics.jsonl, summary.json)")
    print(f"watch:   overparam jobs status {job_id}   overparam jobs logs {job_id} [--follow]   "
          f"overparam jobs stop {job_id}")
    return 0


def submit_sweep(args: argparse.Namespace) -> int:
    """`overparam submit slurm --config SWEEP.yaml`: a Ray cluster in one job, the sweep driver inside it."""
    from overparam_dist.data import check_available

    sweep = _load_sweep(args)
    script, sdir = sweep_script(args, sweep)
    checked: set[str] = set()
    for t in sweep.trials:  # what the driver checks before Ray starts, checked here before anything is queued
        key = repr(t.cfg.data)
        if key not in checked:
            check_available(t.cfg)
            checked.add(key)
        _check_run_dir(t.cfg)
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
    print(f"(dry run: a submission writes this to {sdir}/<job id>.sbatch and runs sbatch on it; "
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
        out = _slurm_cmd(["sbatch", "--parsable"], input=script, cwd=Path.cwd())
    except ConfigError:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    job_id = out.strip().split(";")[0]
    if not _JOB_ID.match(job_id):
        raise ConfigError(f"sbatch answered {out.strip()!r}, not a job id")
    script_file = sdir / f"{job_id}.sbatch"
    script_file.write_text(script)
    return job_id, script_file


def _check_run_dir(cfg: Config) -> None:
    from overparam_dist.rundir import check_run_dir

    check_run_dir(cfg)


# ------------------------------------------------------------------------------------------------ jobs
def is_slurm_job_id(job_id: str) -> bool:
    """Slurm job ids are numbers (array tasks: 12_3); Ray job ids are not."""
    return bool(_JOB_ID.match(job_id))


def _check_id(job_id: str) -> str:
    job_id = str(job_id)
    if not is_slurm_job_id(job_id):
        raise ConfigError(f"'{job_id}' is not a Slurm job id (a number, or ARRAYID_TASK)")
    return job_id


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """Records of `scontrol -o show job`: one dict of key -> value per line (values may hold spaces)."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        keys = list(re.finditer(r"(?:^|(?<=\s))([A-Za-z][A-Za-z0-9_:/]*)=", line))
        rec = {}
        for i, m in enumerate(keys):
            end = keys[i + 1].start() if i + 1 < len(keys) else len(line)
            rec[m.group(1)] = line[m.end():end].strip()
        records.append(rec)
    return records


def job_info(job_id: str) -> dict[str, str]:
    """`scontrol show job` of one job (the first record of an array), as a dict."""
    return job_records(job_id)[0]


def job_records(job_id: str) -> list[dict[str, str]]:
    """`scontrol show job` records: one for a job, one per task of an array."""
    job_id = _check_id(job_id)
    try:
        out = _slurm_cmd(["scontrol", "-o", "show", "job", job_id])
    except ConfigError as exc:
        if "Invalid job id" in str(exc):
            raise ConfigError(f"Slurm job {job_id} is unknown to the controller (never existed, or finished "
                              "longer ago than its MinJobAge)") from None
        raise
    recs = parse_scontrol(out)
    if not recs:
        raise ConfigError(f"Slurm job {job_id}: scontrol printed nothing")
    return recs


def job_state(job_id: str) -> str:
    """The job's state word: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, REQUEUED, ..."""
    return job_info(job_id).get("JobState", "UNKNOWN")


def job_status(job_id: str) -> str:
    """One line, starting with the state: `RUNNING job 12 op-x on vm, 00:01:02 of 1:00:00, restarts 0, log ...`."""
    recs = job_records(job_id)
    if len(recs) > 1:  # an array: count its tasks by state
        counts: dict[str, int] = {}
        for r in recs:
            counts[r.get("JobState", "UNKNOWN")] = counts.get(r.get("JobState", "UNKNOWN"), 0) + 1
        summary = ", ".join(f"{n} {st}" for st, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"ARRAY job {job_id} {recs[0].get('JobName', '')}: {summary} (status of one task: JOBID_TASK)"
    info = recs[0]
    state = info.get("JobState", "UNKNOWN")
    parts = [f"{state} job {info.get('JobId', job_id)} {info.get('JobName', '')}".rstrip()]
    reason = info.get("Reason", "None")
    if reason and reason != "None":
        parts[0] += f" ({reason})"
    if info.get("NodeList") and info["NodeList"] != "(null)":
        parts.append(f"on {info['NodeList']}")
    parts.append(f"{info.get('RunTime', '?')} of {info.get('TimeLimit', '?')}")
    if info.get("Restarts", "0") != "0":
        parts.append(f"restarts {info['Restarts']}")
    if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED"):
        parts.append(f"exit {info.get('ExitCode', '?')}")
    if info.get("StdOut"):
        parts.append(f"log {info['StdOut']}")
    return ", ".join(parts)


def _log_path(job_id: str) -> Path:
    try:
        out = job_info(job_id).get("StdOut")
        if out:
            return Path(out)
    except ConfigError as exc:
        if "unknown to the controller" not in str(exc):
            raise
    # Aged out of the controller: look where our submissions put logs, below ./runs.
    found = sorted(Path("runs").glob(f"**/*{SLURM_SUFFIX}/{job_id}.out"))
    if found:
        return found[0]
    raise ConfigError(f"Slurm job {job_id}: unknown to the controller and no runs/**/*{SLURM_SUFFIX}/{job_id}.out here")


def job_logs(job_id: str) -> str:
    """The job's log (stdout and stderr of the batch script and every task)."""
    job_id = _check_id(job_id)
    path = _log_path(job_id)
    if not path.is_file():
        return ""  # pending: nothing written yet
    return path.read_text(errors="replace")


def cancel(job_id: str) -> str:
    """scancel the job; returns a one-line confirmation."""
    job_id = _check_id(job_id)
    state = job_state(job_id)  # a clear error for an unknown id (scancel alone only warns)
    if state in FINISHED_STATES:
        return f"Slurm job {job_id}: already {state} (nothing to stop)"
    _slurm_cmd(["scancel", job_id])
    return f"Slurm job {job_id}: cancel requested (was {state})"


# ------------------------------------------------------------------------------------------------ CLI wiring
# launcher/cli.py plugs backends in through three functions: add_submit_parser(targets) for `overparam submit`,
# owns_job_id(job_id) and jobs_command(action, job_id, args) for `overparam jobs status|logs|stop JOB_ID`.
FINISHED_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                   "DEADLINE", "PREEMPTED", "SPECIAL_EXIT", "REVOKED")


def owns_job_id(job_id: str) -> bool:
    return is_slurm_job_id(job_id)


def follow_logs(job_id: str, poll_s: float = 1.0) -> int:
    """Print the job's log as it grows until the job ends; 0 if it COMPLETED, else 1."""
    job_id = _check_id(job_id)
    path, printed = _log_path(job_id), 0
    while True:
        state = job_state(job_id)
        if path.is_file():
            with open(path, "rb") as f:
                f.seek(printed)
                chunk = f.read()
            printed += len(chunk)
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        if state in FINISHED_STATES:
            print(f"(Slurm job {job_id}: {state})", file=sys.stderr)
            return 0 if state == "COMPLETED" else 1
        time.sleep(poll_s)


def jobs_command(action: str, job_id: str, args: argparse.Namespace | None = None) -> int:
    """`overparam jobs status|logs|stop JOB_ID` for a Slurm job id (`cancel` is an alias of `stop`)."""
    if action == "status":
        print(job_status(job_id))
    elif action == "logs":
        if getattr(args, "follow", False):
            return follow_logs(job_id)
        text = job_logs(job_id)
        sys.stdout.write(text if text else f"(no log yet for Slurm job {job_id})\n")
    elif action in ("stop", "cancel"):
        print(cancel(job_id))
    else:
        raise ConfigError(f"unknown jobs action '{action}'")
    return 0


def add_submit_parser(targets) -> argparse.ArgumentParser:
    """Add `slurm` to the targets of `overparam submit`."""
    p = targets.add_parser("slurm", help="submit to Slurm with sbatch: a sweep on a Ray cluster inside the job, "
                                         "or (--trial) one trial, srun-native")
    add_submit_args(p)
    p.set_defaults(fn=submit)
    return p


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
