"""Issue 14, item 4 and issue 28, item 4: a real two-node Slurm cluster on this host (`slurm/local-cluster.sh start
--nodes 2`: two slurmd daemons, node1 and node2), apart from the one-node cluster of test_slurm.py (its own directory
and ports). A trial with one rank per node equals one process. A sweep job's Ray spans both nodes; sent USR1 twice,
it checkpoints, requeues and resumes twice, while a dp=2 trial job (a rank on each node) is cancelled and its
resubmission continues it: every trial then holds the invariants of a chaos run (chaos_checks.py)."""

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from chaos_checks import (
    TAG_ENV,
    check_sweep,
    check_trial,
    code_stamp,
    listeners_of,
    listening,
    references_done,
    start_references,
    summary_stamp,
    tagged_pids,
    teardown_leftovers,
)
from conftest import ROOT, read_rows, run_cli
from test_slurm import job_id_of, job_ray_processes, overparam, read_csv, wait_finished

from launcher import slurm
from overparam_dist.config import load_config

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


SLURM_TRIAL = {"data.n": 8, "data.target": "regression", "train.steps": 800, "train.stop_at_fit": False,
               "metrics.every": 20, "checkpoint.every": 100, "wandb.mode": "offline", "metrics.spectral": False}


def _cli(*args: str, env: dict, cwd: Path) -> str:
    res = subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=300)
    return job_id_of(res)


def _check_preempted(sdir: Path, steps: int) -> dict[str, str]:
    """What a requeued sweep job left: every trial preempted (its checkpoint and summary at the same step) or
    completed, at least one of them mid-run, and the .preempt file its next start removes. Returns the metrics.jsonl
    of each trial preempted mid-run: the resumed trial's must start with those very bytes."""
    preempted, logged = [], {}
    for r in read_csv(sdir / "results.csv"):
        assert r["status"] in ("preempted", "completed"), r
        if r["status"] == "preempted" and r["steps"]:  # no steps: it was to start as the signal came: never ran
            summary = json.loads((sdir / r["trial"] / "summary.json").read_text())
            assert summary["status"] == "preempted" and summary["steps"] == int(r["steps"]), (r, summary)
            preempted.append(summary["steps"])
            logged[r["trial"]] = (sdir / r["trial"] / "metrics.jsonl").read_text()
    assert any(0 < s < steps for s in preempted), preempted
    assert (sdir / ".preempt").exists()
    return logged


@pytest.mark.timeout(420)
def test_sweep_and_trial_jobs_survive_two_preemptions_and_a_cancel_with_nothing_lost(two_node_slurm, ray_address):
    """On the two-node local Slurm: a sweep job (Ray over both nodes) gets USR1 twice, and twice checkpoints, requeues
    and resumes; a dp=2 trial job (a rank on each node) is cancelled, and the same submission again continues it.
    The invariants of the Ray chaos run hold for every trial (chaos_checks.py); the test session's own Ray is
    untouched."""
    import ray

    from launcher.sweep.spec import Trial, load_sweep

    work = Path(tempfile.mkdtemp(prefix="chaos-slurm-", dir="/tmp"))
    code, tag = code_stamp(), secrets.token_hex(6)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}  # SLURM_CONF: the two-node cluster's
    env.update({TAG_ENV: tag, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"})
    spec = {"name": "slurmchaos", "overrides": SLURM_TRIAL, "grid": {"model.width": [16, 32], "seed": [0, 1]}}
    (spec_file := work / "slurmchaos.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(spec_file, runs_dir=work / "runs")
    sweep_cfgs = {t.name: t.cfg for t in sweep.trials}
    trial_args = ["submit", "slurm", "--trial", "--nodes", "2", "--cpus-per-task=1", "parallel.dp=2",
                  f"run.dir={work / 'trial'}", "model.width=32", *[f"{k}={v}" for k, v in SLURM_TRIAL.items()]]
    sweep_job = _cli("submit", "slurm", "--config", str(spec_file), "--nodes", "2", "--cpus-per-node=1",
                     "--ray-auth=disabled", "--runs-dir", str(work / "runs"), env=env, cwd=work)
    trial_jobs = [_cli(*trial_args, env=env, cwd=work)]
    trial = Trial("trial", {}, load_config(None, trial_args[6:]))  # the trial job's config, as submitted
    refs = start_references([*sweep.trials, trial], work / "ref", sweep.batch_seeds)  # while the jobs run
    sdir, trial_dir = work / "runs" / "slurmchaos", work / "trial"
    runs = {**{n: sdir / n for n in sweep_cfgs}, "trial": trial_dir}
    stamps: dict[str, tuple] = {}
    ports: set = set()
    try:
        preempted_rows: dict[str, int] = {}  # rows of each sweep trial at the last preemption
        before_requeue: list[dict[str, str]] = []  # metrics.jsonl of the trials each preemption interrupted
        usr1, cancelled_at = 0, None
        deadline = time.monotonic() + 360
        while True:
            assert time.monotonic() < deadline, (slurm.job_logs(sweep_job)[-3000:], slurm.job_logs(trial_jobs[-1]))
            for name, d in runs.items():
                if name not in stamps and (s := summary_stamp(d)) is not None:
                    stamps[name] = s
            ports |= {(a, p) for _, a, p in listeners_of(tagged_pids(tag))}
            rows = {n: len(read_rows(d)) if (d / "metrics.jsonl").is_file() else 0 for n, d in runs.items()}
            info = slurm.job_info(sweep_job)
            restarts = int(info.get("Restarts", "0"))
            if info["JobState"] == "RUNNING" and usr1 == restarts < 2 and any(
                    n not in stamps and rows[n] >= preempted_rows.get(n, 0) + 3 for n in sweep_cfgs):
                subprocess.run(["scancel", "--signal=USR1", "--batch", sweep_job], check=True, timeout=60)
                usr1 += 1
            elif info["JobState"] == "PENDING" and restarts == usr1 > 0:  # requeued: start it now, not in ~120 s
                preempted_rows = {n: rows[n] for n in sweep_cfgs}
                before_requeue.append(_check_preempted(sdir, SLURM_TRIAL["train.steps"]))
                time.sleep(2)  # not within the second of the requeue (test_slurm.py: "credential revoked")
                subprocess.run(["scontrol", "update", f"jobid={sweep_job}", "StartTime=now"], check=True, timeout=60)
                while slurm.job_info(sweep_job)["JobState"] == "PENDING":
                    time.sleep(0.2)
            if cancelled_at is None and (trial_dir / "checkpoints" / "step_00000200").is_dir():
                slurm.cancel(trial_jobs[0])
                wait_finished(trial_jobs[0], timeout=60)
                cancelled_at = (trial_dir / "metrics.jsonl").read_text()
                trial_jobs.append(_cli(*trial_args, env=env, cwd=work))  # the same submission, again
            if slurm.job_state(sweep_job) in slurm.FINISHED_STATES and cancelled_at is not None \
                    and slurm.job_state(trial_jobs[-1]) in slurm.FINISHED_STATES:
                break
            time.sleep(0.2)
        text = slurm.job_logs(sweep_job)
        assert slurm.job_state(sweep_job) == "COMPLETED" and usr1 == 2, text[-3000:]
        assert text.count("exit code 75 after USR1") == 2 and "(restart 2)" in text, text[-3000:]
        assert "(--resume)" in text and not (sdir / ".preempt").exists(), text[-3000:]
        # Resumed, not rerun: a trial preempted mid-run keeps the very bytes it had logged (their time/* values would
        # differ after a rerun from step 0, which the comparison with the reference cannot tell apart)
        for logged in before_requeue:
            for name, jsonl in logged.items():
                assert (sdir / name / "metrics.jsonl").read_text().startswith(jsonl), name
        # `ray status` in the log lists both Ray nodes at each of the job's three starts, and every trial ran on one of
        # them (which one a batch of seeds lands on at its last start is Ray's choice).
        starts = re.split(r"\(restart \d\)", text)[1:]  # the log names each start, the first one "(restart 0)"
        ray_ids = [set(re.findall(r"^ \d+ node_([0-9a-f]{12})", part, re.M)) for part in starts]
        assert [len(ids) for ids in ray_ids] == [2, 2, 2], text[-3000:]
        ran_on = {yaml.safe_load((d / "config.yaml").read_text())["derived"]["world"]["nodes"][0]
                  for d in (sdir / n for n in sweep_cfgs)}
        assert ran_on <= {f"ray-{i}" for ids in ray_ids for i in ids}, (ran_on, ray_ids)
        assert slurm.job_state(trial_jobs[0]) == "CANCELLED" and slurm.job_state(trial_jobs[1]) == "COMPLETED"
        # Continued, not redone: the rows logged before the checkpoint it resumed from (at least step 200's) are the
        # very same bytes (their time/* values would differ after a rerun); the checkpoint's own row is logged again
        kept = [ln for ln in cancelled_at.splitlines(keepends=True) if json.loads(ln)["step"] < 200]
        assert len(kept) == 10 and (trial_dir / "metrics.jsonl").read_text().startswith("".join(kept))

        refs = references_done(refs)
        assert code_stamp() == code, "the code changed during the run: its comparisons with the reference are void"
        verdict = check_sweep(sdir, {n: refs[n] for n in sweep_cfgs}, stamps)
        check_trial("trial", trial_dir, refs["trial"], stamps.get("trial"), verdict)
        assert verdict.ok and verdict.rows_lost == 0, verdict.problems
        assert not teardown_leftovers(tag, timeout=60) and not job_ray_processes(sweep_job)
        assert not ports & set(listening().values()), ports
        assert ray.is_initialized() and ray.get(ray.put(7)) == 7  # the session's private Ray never noticed
        assert ray.get_runtime_context().gcs_address == ray_address
        print(f"slurm chaos: USR1 x{usr1}, trial job {trial_jobs[0]} cancelled and continued by {trial_jobs[1]}; "
              f"{len(runs)} trials, W&B pieces {verdict.wandb_pieces}, rows lost {verdict.rows_lost}")
    finally:
        if not isinstance(refs, dict) and refs.is_alive():
            refs.kill()
        for job in (sweep_job, *trial_jobs):
            if slurm.job_state(job) not in slurm.FINISHED_STATES:
                slurm.cancel(job)
        if os.environ.get("CHAOS_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
