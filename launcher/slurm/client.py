"""The Slurm client commands (sbatch, scontrol, scancel; no sacct, which needs slurmdbd): any failure is one
ConfigError line that says what to check."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from overparam_dist.config import ConfigError

JOB_ID = re.compile(r"^[0-9]+(_[0-9]+)?$")
_SLURM_CMD_TIMEOUT = 120  # s; an unreachable controller makes sbatch give up after ~10 s, scontrol after ~20 s


def slurm_cmd(argv: list[str], *, input: str | None = None, cwd: Path | None = None) -> str:
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
        raise ConfigError(slurm_error(argv[0], res.stderr or res.stdout))
    return res.stdout


def slurm_error(cmd: str, text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "fatal" in ln.lower()] or lines
    msg = errors[-1] if errors else f"{cmd} failed"
    msg = re.sub(r"^(\S+: )?(error|fatal): ", "", msg)
    if "Unable to contact slurm controller" in msg or "connect failure" in msg.lower():
        msg += " (is slurmctld running? on one machine: slurm/local-cluster.sh status)"
    return f"{cmd}: {msg}"
