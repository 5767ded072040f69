"""Fault tolerance of sweeps on the shared local Ray: a trial's worker killed mid-run, the driver killed."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, read_rows, read_summary

from launcher.sweep.tune import PIDS_DIR

# Regression targets never "fit", so every trial runs all its steps; checkpoints every 20 steps.
TRIAL = {"data.target": "regression", "metrics.every": 5, "checkpoint.every": 20, "model.width": 512,
         "model.depth": 2}


def _start_sweep(tmp_path: Path, spec: dict, address: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = tmp_path / f"{spec['name']}-{len(list(tmp_path.glob('*.log')))}.log"
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "sweep", "--config", str(path), "--runs-dir",
                             str(tmp_path / "runs"), "--address", address, "--progress-every", "5", *extra],
                            cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    return proc, log


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"sweep ended early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _ckpt(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:08d}"


@pytest.mark.slow
@pytest.mark.parametrize("dp", [1, 2])
def test_killed_trial_worker_resumes_from_its_checkpoint(ray_address, tmp_path, dp):
    """dp=1: the Tune trial's process dies; dp=2: rank 0 of the trial's local processes dies (local_trial.py).
    Either way Tune retries the trial and run_trial resumes from the last checkpoint."""
    spec = {"name": "kill", "overrides": {**TRIAL, "train.steps": 200, "parallel.dp": dp}, "grid": {"seed": [0]}}
    proc, log = _start_sweep(tmp_path, spec, ray_address)
    sdir = tmp_path / "runs" / "kill"
    run, pid_file = sdir / "trial", sdir / PIDS_DIR / "trial.pid"
    _wait_for(lambda: _ckpt(run, 40).is_dir() and pid_file.is_file(), proc, log)
    pid = int(pid_file.read_text())
    os.kill(pid, signal.SIGKILL)  # the Ray worker process running run_trial
    assert not (run / "summary.json").exists()
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]

    if dp == 1:
        assert "retrying from its last checkpoint" in log.read_text()
    assert int(pid_file.read_text()) != pid  # a new worker process finished it
    summary = read_summary(run)
    assert summary["status"] == "completed" and summary["steps"] == 200
    assert [r["step"] for r in read_rows(run)] == list(range(0, 201, 5))  # no duplicate, no missing step
    # What Tune saw across both attempts: the second one started from a checkpoint (a restart from scratch
    # would report step 0 again); a step reported twice is one logged after that checkpoint before the kill.
    (result_json,) = (sdir / "_ray" / "tune").glob("*/trial/result.json")
    reported = [json.loads(line) for line in result_json.read_text().splitlines() if line.strip()]
    assert "summary_json" in reported[-1]
    steps = [r["step"] for r in reported[:-1]]
    assert steps.count(0) == 1 and sorted(set(steps)) == list(range(0, 201, 5)), steps
    restart = next((i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]), None)
    if restart is not None:
        assert steps[restart] >= 40 and steps[restart] % 20 == 0, steps


def _snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_killed_driver_then_resume_skips_finished_trials(ray_address, tmp_path):
    spec = {"name": "drv", "overrides": {**TRIAL, "train.steps": 120}, "grid": {"seed": [0, 1, 2, 3]},
            "batch_seeds": False}  # four trials, which end at different times
    proc, log = _start_sweep(tmp_path, spec, ray_address)
    sdir = tmp_path / "runs" / "drv"
    runs = [sdir / f"s{i}" for i in range(4)]

    def one_done_one_interrupted() -> bool:
        done = [r for r in runs if (r / "summary.json").is_file()]
        return bool(done) and any(_ckpt(r, 20).is_dir() and r not in done for r in runs)

    _wait_for(one_done_one_interrupted, proc, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Ray ends the dead driver's trial actors; wait until none of them runs before resuming.
    pids = [int(p.read_text()) for p in (sdir / PIDS_DIR).glob("*.pid")]
    deadline = time.time() + 60
    while any(_alive(p) for p in pids):
        assert time.time() < deadline, "trial processes of the killed driver are still running"
        time.sleep(0.2)

    finished = {r.name: _snapshot(r) for r in runs if (r / "summary.json").is_file()}
    interrupted = [r.name for r in runs if r.name not in finished and (r / "checkpoints").is_dir()]
    assert finished and interrupted

    proc, log = _start_sweep(tmp_path, spec, ray_address, "--resume")
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert f"{len(finished)} trial(s) already finished" in out
    for name, snap in finished.items():
        assert _snapshot(sdir / name) == snap, name  # not run again: every file untouched
    for r in runs:
        assert read_summary(r)["status"] == "completed"
        assert [row["step"] for row in read_rows(r)] == list(range(0, 121, 5)), r.name
    rows = (sdir / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and all(",completed," in line for line in rows[1:])
