"""The options of `overparam submit slurm`: one dataclass schema (as hydra's submitit plugin keeps its launcher
options), the argparse flags generated from it, and the validation of values that reach sbatch.

Behaviour (rendering scripts, calling sbatch) lives in scripts.py and submit.py.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import MISSING, dataclass, field, fields

from overparam_dist.config import ConfigError

RAY_AUTH_MODES = ("token", "disabled")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")
_MEM = re.compile(r"^[0-9]+[KMGT]?$")
# What a user-given value on a #SBATCH line may be: sbatch unquotes those lines by its own rules, so anything
# beyond these characters is refused rather than quoted.
STRICT = {  # option -> (pattern, what it allows, for the error line)
    "partition": (re.compile(r"^[A-Za-z0-9_.-]+(,[A-Za-z0-9_.-]+)*$"), "letters, digits, _ . - (a list: ,)"),
    "account": (re.compile(r"^[A-Za-z0-9_.-]+$"), "letters, digits, _ . -"),
    "qos": (re.compile(r"^[A-Za-z0-9_.-]+$"), "letters, digits, _ . -"),
    "constraint": (re.compile(r"^[A-Za-z0-9_.&|,:*!\[\]()-]+$"), "letters, digits, _ . - and & | , : * ! [ ] ( )"),
}
SBATCH_ARG = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:@/+=*-]+)?$")


def _opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class SlurmOptions:
    config: str | None = _opt(None, "a sweep file (configs/sweep/*.yaml; with --trial: an experiment YAML merged "
                                    "over the defaults, as for `overparam train`)")
    overrides: list[str] = field(default_factory=list, metadata={
        "help": "sweep keys or trial config keys, as for `overparam sweep` (with --trial: config overrides)",
        "positional": True})
    trial: bool = _opt(False, "submit ONE trial (srun starts parallel.dp x parallel.tp tasks; no Ray)")
    nodes: int = _opt(1, "nodes (default 1); a sweep runs one Ray node on each, a trial spreads its tasks evenly")
    gpus_per_node: int = _opt(0, "GPUs per node (default 0: CPU, gloo)")
    cpus_per_task: int | None = _opt(None, "--trial: CPUs per task (default 1); sets OMP_NUM_THREADS")
    cpus_per_node: int | None = _opt(None, "sweep: CPUs per node given to Ray (--num-cpus; default: what the "
                                           "largest trial needs)")
    runs_dir: str | None = _opt(None, "sweep: where runs/<sweep>/ goes (default: ./runs)")
    ray_port: int | None = _opt(None, "sweep: Ray's GCS port on the head; the dashboard, client, agent and metrics "
                                      "ports follow it (+1..+4). Default: 20000 + 8 x (job id mod 1000)")
    ray_auth: str | None = _opt(None, "sweep: Ray token authentication inside the job (default token: the user's "
                                      "token, else one per job; disabled: anyone who reaches the ports may use the "
                                      "cluster)", choices=RAY_AUTH_MODES)
    mem: str | None = _opt(None, "memory per node, e.g. 16G (default: the cluster's DefMemPerCPU x CPUs)")
    time: str | None = _opt(None, "time limit: MIN, H:M:S, D-H, D-H:M, D-H:M:S (default: the partition's)")
    signal_seconds: int = _opt(120, "send USR1 this many seconds before the time limit; the job then requeues "
                                    "itself (default 120; Slurm may send it up to 60 s earlier)")
    partition: str | None = _opt(None, "Slurm partition")
    account: str | None = _opt(None, "Slurm account")
    qos: str | None = _opt(None, "Slurm QOS")
    constraint: str | None = _opt(None, "node features, e.g. 'a100&ib'")
    job_name: str | None = _opt(None, "Slurm job name (default: op-<run name>, made safe)")
    sbatch_arg: list[str] = field(default_factory=list, metadata={
        "help": "extra sbatch option, repeatable; write it with '=': --sbatch-arg=--exclusive",
        "metavar": "--OPTION[=VALUE]"})
    dry_run: bool = _opt(False, "print the exact script a submission would write and submit nothing")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmOptions:
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    def check_job_name(self) -> str | None:
        if self.job_name is not None and not JOB_NAME.match(self.job_name):
            raise ConfigError(f"--job-name {self.job_name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - "
                              "(starting with a letter or digit)")
        return self.job_name

    def sbatch_options(self, gpus: int, signal_s: int) -> list[str]:
        """The optional sbatch options shared by trial and sweep jobs, validated."""
        options: list[str] = []
        if gpus:
            options.append(f"--gpus-per-node={gpus}")
        if self.mem is not None:
            if not _MEM.match(self.mem):
                raise ConfigError(f"--mem {self.mem!r}: use a number of megabytes or a number with K, M, G or T")
            options.append(f"--mem={self.mem}")
        if self.time is not None:
            limit = time_limit_seconds(self.time)
            if limit is not None and signal_s >= limit:
                raise ConfigError(f"--signal-seconds {signal_s} must be shorter than the time limit "
                                  f"--time {self.time}")
            options.append(f"--time={self.time}")
        for flag, (pattern, allowed) in STRICT.items():
            value = plain(f"--{flag}", getattr(self, flag))
            if value is not None:
                if not pattern.match(value):
                    raise ConfigError(f"--{flag} {value!r}: may hold only {allowed}")
                options.append(f"--{flag}={value}")
        for extra in self.sbatch_arg:
            plain("--sbatch-arg", extra)
            if not SBATCH_ARG.match(extra):
                raise ConfigError(f"--sbatch-arg {extra!r}: must be one long sbatch option, --name or --name=VALUE "
                                  "(VALUE: letters, digits and _ . , : @ / + = * -), e.g. --exclusive or "
                                  "--mail-type=END")
            options.append(extra)
        return options


def add_submit_args(p: argparse.ArgumentParser) -> None:
    """The flags of `overparam submit slurm`, one per SlurmOptions field."""
    for f in fields(SlurmOptions):
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if meta.pop("positional", False):
            p.add_argument(f.name, nargs="*", metavar="key=value", help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=help_text)
        elif isinstance(default, list):
            p.add_argument(flag, action="append", default=[], help=help_text, **meta)
        else:
            kind = int if "int" in str(f.type) else str
            p.add_argument(flag, type=kind, default=default, help=help_text, **meta)


MAX_COUNT = 1_000_000  # nodes, CPUs, GPUs, seconds: past this a count is a typo, and Slurm's 32-bit fields overflow


def positive(name: str, value: int, minimum: int = 1, maximum: int = MAX_COUNT) -> int:
    if value is None or not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be an integer from {minimum} to {maximum}, got {value}")
    return value


def plain(name: str, value: str | None) -> str | None:
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


