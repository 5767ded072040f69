"""Issue 14, item 4: a real two-node Slurm cluster on this host (`slurm/local-cluster.sh start --nodes 2`: two
slurmd daemons, node1 and node2), apart from the one-node cluster of test_slurm.py (its own directory and ports).
A trial with one rank per node equals one process; a sweep's Ray spans both nodes, its trials run on both, and a
USR1 preemption requeues the job, which resumes every trial with no step lost or logged twice."""

import os
import re
import subprocess
import time

import pytest
import yaml
from conftest import ROOT, read_rows, run_cli
from test_slurm import QUICKSTART, job_id_of, job_ray_processes, overparam, read_csv, wait_finished

from launcher import slurm

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "slurm" / "local-cluster.sh"
TWO_NODES = {"OVERPARAM_SLURM_DIR": "/tmp/overparam-slurm-2n", "OVERPARAM_SLURM_CTLD_PORT": "6837",
             "OVERPARAM_SLURM_SLURMD_PORT": "6838"}


def _cluster(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLUSTER), *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, **TWO_NODES})


@pytest.fixture(scope="module")
def two_node_slurm():
    res = _cluster("start", "--nodes", "2")
    if res.returncode == 3:
        pytest.skip(f"no local Slurm cluster: {res.stderr.strip()}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "node1 idle" in res.stdout and "node2 idle" in res.stdout, res.stdout
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", f"{TWO_NODES['OVERPARAM_SLURM_DIR']}/slurm.conf")
    try:
        # A running cluster keeps its number of nodes: asking for another is one line, exit 1.
        other = _cluster("start", "--nodes", "1")
        assert other.returncode == 1 and "runs with 2 node(s), not 1: stop it first" in other.stderr, other
        yield
    finally:
        mp.undo()
        stopped = _cluster("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


SMALL = ["model.width=128", "train.steps=10", "data.target=regression", "metrics.every=1", "wandb.mode=disabled"]


def test_trial_with_one_rank_per_node_equals_one_process(tmp_path, two_node_slurm):
    res = overparam("submit", "slurm", "--trial", "--nodes", "2", "--cpus-per-task=1", "parallel.dp=2",
                    f"run.dir={tmp_path / 'remote'}", *SMALL, cwd=tmp_path)
    job_id = job_id_of(res)
    seen = wait_finished(job_id, timeout=180)
    log = (tmp_path / "remote.slurm" / f"{job_id}.out").read_text()
    assert seen[-1] == "COMPLETED", (seen, log)
    assert "on node[1-2]: 2 tasks" in log, log
    world = yaml.safe_load((tmp_path / "remote" / "config.yaml").read_text())["derived"]["world"]
    assert world["nodes"] == ["node0", "node1"], world  # by SLURM_NODEID: both nodes have this host's name
    assert run_cli("train", "--quiet", *SMALL, f"run.dir={tmp_path / 'one'}").returncode == 0
    got, want = read_rows(tmp_path / "remote"), read_rows(tmp_path / "one")
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(11))
    for g, w in zip(got, want):
        assert g["train/loss"] == pytest.approx(w["train/loss"], rel=1e-5)
        assert g["ntk/rel_drift"] == pytest.approx(w["ntk/rel_drift"], rel=1e-5, abs=1e-9)


def test_sweep_spans_both_nodes_and_survives_a_requeue(tmp_path, two_node_slurm):
    steps, every = 1500, 100
    args = ["--config", str(QUICKSTART), "--nodes", "2", "--cpus-per-node=2", "--ray-auth=disabled",
            "wandb.mode=disabled", "name=two", "grid.model.width=[64,256]", "grid.seed=[0]", f"train.steps={steps}",
            f"metrics.every={every}", "checkpoint.every=500"]
    job_id = job_id_of(overparam("submit", "slurm", *args, cwd=tmp_path))
    sweep, log = tmp_path / "runs" / "two", tmp_path / "runs" / "two.slurm" / f"{job_id}.out"

    def mid_run() -> bool:
        return any(not (d / "summary.json").exists() and len(read_rows(d)) >= 3
                   for d in sweep.glob("w*") if (d / "metrics.jsonl").is_file())

    deadline = time.monotonic() + 240
    while not mid_run():
        assert time.monotonic() < deadline and slurm.job_state(job_id) not in slurm.FINISHED_STATES, \
            slurm.job_logs(job_id)
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=60)
    deadline = time.monotonic() + 120
    while not ((info := slurm.job_info(job_id))["JobState"] == "PENDING" and info.get("Restarts", "0") != "0"):
        assert info["JobState"] not in slurm.FINISHED_STATES and time.monotonic() < deadline, slurm.job_logs(job_id)
        time.sleep(0.2)
    time.sleep(2)  # not within the second of the requeue (test_slurm.py: "credential revoked")
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True, timeout=60)
    seen = wait_finished(job_id, timeout=400)
    text = log.read_text()
    assert seen[-1] == "COMPLETED", (seen, text)
    assert "(restart 1)" in text and "(--resume)" in text and "Ray cluster up: 2 node(s)" in text, text

    # `ray status` in the log lists both Ray nodes, once per start of the job; the trials ran on both.
    starts = text.split("(restart 1)")
    ray_nodes = [set(re.findall(r"^ \d+ node_([0-9a-f]{12})", part, re.M)) for part in starts]
    assert [len(ids) for ids in ray_nodes] == [2, 2], text
    ran_on = {yaml.safe_load((d / "config.yaml").read_text())["derived"]["world"]["nodes"][0]
              for d in sweep.glob("w*")}
    assert ran_on <= {f"ray-{i}" for ids in ray_nodes for i in ids} and len(ran_on) >= 2, (ran_on, ray_nodes)

    rows = read_csv(sweep / "results.csv")
    assert sorted(r["trial"] for r in rows) == ["w256-d1", "w256-d2", "w64-d1", "w64-d2"]
    assert {r["status"] for r in rows} == {"completed"}, rows
    for d in sorted(sweep.glob("w*")):
        assert [r["step"] for r in read_rows(d)] == list(range(0, steps + 1, every)), d.name
    assert not job_ray_processes(job_id)
