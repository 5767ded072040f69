"""`overparam jobs status|logs|stop JOB_ID` for Slurm job ids, from `scontrol -o show job` and the job's log."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from overparam_dist.config import ConfigError

from .client import JOB_ID, slurm_cmd
from .scripts import SLURM_SUFFIX

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


def is_slurm_job_id(job_id: str) -> bool:
    """Slurm job ids are numbers (array tasks: 12_3); Ray job ids are not."""
    return bool(JOB_ID.match(job_id))


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
        out = slurm_cmd(["scontrol", "-o", "show", "job", job_id])
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
    slurm_cmd(["scancel", job_id])
    return f"Slurm job {job_id}: cancel requested (was {state})"
