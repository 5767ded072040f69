"""Issue 28, item 3, reduced: a chaos run (tests/chaos.py) of 12 trials, dp=1 (two cells of three batched seeds) and
dp=2, W&B offline, on a real two-node Ray on this host, with 9 faults from a seeded schedule: trial processes killed
(rank 0 or another rank), one node killed (the sweep goes on on the other), the driver killed (then --resume), the
sweep's tmpfs filled for a few seconds and made read-only while the driver was down. Every trial must finish once,
with each step logged once and the rows, final metrics and W&B history of an unfaulted run (chaos_checks.py). The
full run, with the overhead against an unfaulted sweep, is bench/chaos.py; item 4 (the same invariants on Slurm) is
in test_slurm_nodes.py, beside the two-node cluster it uses."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from chaos import run_chaos

# Regression targets never fit: every trial runs all its steps. A row and a checkpoint every 10 of 40 steps.
TRIAL = {"data.n": 8, "data.target": "regression", "train.steps": 40, "train.stop_at_fit": False,
         "metrics.every": 10, "checkpoint.every": 10, "wandb.mode": "offline", "metrics.spectral": False}
GRID = {"model.width": [16, 32], "parallel.dp": [1, 2], "seed": [0, 1, 2]}
SPEC = {"name": "chaos", "overrides": TRIAL, "grid": GRID, "resources": {"cpus": 1}, "max_failures": 20,
        "reuse_actors": True}


def _can_mount() -> bool:
    return os.geteuid() == 0 and subprocess.run(["which", "mount"], capture_output=True).returncode == 0


@pytest.mark.services
@pytest.mark.skipif(not _can_mount(), reason="mounting the sweep's tmpfs needs root")
def test_chaos_sweep_survives_seeded_faults_with_nothing_lost():
    # Not under pytest's tmp_path: the sweep's tmpfs is mounted in it, and another pytest session on the machine
    # removes old base directories (rm -rf across the mount).
    work = Path(tempfile.mkdtemp(prefix="chaos-", dir="/tmp"))
    try:
        out = run_chaos(work, SPEC, seed=28, kills=5, drivers=1, mean_gap=7.0, timeout=300, fill_s=3.0)
    finally:
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
    lines = out.lines()
    print("\n".join(lines))
    assert not out.code_changed, lines
    assert len(out.trials) == 12 and {c.parallel.dp for c in out.trials.values()} == {1, 2}
    assert len(out.injected) >= 8, lines
    assert {f.kind for f in out.injected} == {"kill_trial", "kill_node", "kill_driver", "disk_full", "read_only"}, lines
    assert out.verdict.ok, out.verdict.problems
    assert out.verdict.rows_lost == 0
    assert len(out.survived) == len(out.injected), lines
    assert not out.leftovers and not out.open_ports, lines
    assert not out.exposed, lines  # every port of the run on loopback (parallel/stores.py: the dp=2 TCP stores)
