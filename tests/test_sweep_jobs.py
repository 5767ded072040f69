"""Ray Jobs: a `ray start --head` cluster of our own (loopback, own ports and temp dir), the quickstart
submitted with `overparam submit ray`, followed with `overparam jobs`, the cluster stopped by PID."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli


def _free_ports(k: int) -> list[int]:
    socks, ports = [], []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except Exception:
        return 0, b""


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names our cluster's temp dir: ours, whatever session they are in."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if text in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d.name))
            except OSError:
                pass
    return out


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head --block` in its own session; yields the dashboard URL; stops it by PID."""
    gcs, dash, agent, agent_grpc, rt_env, metrics, client, nm, om = _free_ports(9)
    temp = f"/tmp/opr-j{os.getpid()}"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "",
           # the cluster's `python` is this environment's (as after `source .venv/bin/activate`)
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--disable-usage-stats",
         "--node-ip-address=127.0.0.1", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={rt_env}",
         f"--metrics-export-port={metrics}", f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
         f"--object-manager-port={om}", "--num-cpus=2", f"--temp-dir={temp}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 180
        while _get(f"{url}/api/version")[0] != 200:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-3000:]
            assert time.time() < deadline, "the Ray head did not come up"
            time.sleep(0.5)
        yield url, temp
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            head.kill()
        for attempt in range(20):
            left = _pids_mentioning(temp)
            try:
                os.killpg(head.pid, signal.SIGKILL if attempt else signal.SIGTERM)
            except ProcessLookupError:
                pass
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if not left:
                break
            time.sleep(0.5)
        assert not _pids_mentioning(temp), "processes of the test cluster survived"
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_submit_quickstart_as_ray_job(ray_head, tmp_path):
    ray_head, temp = ray_head
    secret = f"wandbkey{os.getpid()}x{time.time_ns()}"  # set where we submit: must reach no job info or log
    env = {"RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "", "OVERPARAM_STATE_DIR": str(tmp_path / "state"),
           "WANDB_API_KEY": secret}
    runs = tmp_path / "runs"
    res = run_cli("submit", "ray", "--address", ray_head, "--config", "configs/sweep/quickstart.yaml",
                  "--runs-dir", str(runs), "name=jobq", "grid.model.width=[16,32]", "grid.model.depth=[1]",
                  "grid.seed=[0]",
                  "train.steps=20", env=env)
    assert res.returncode == 0, res.stderr
    job_id = re.search(r"job id: (\S+)", res.stdout).group(1)
    assert f"{ray_head}/#/jobs/{job_id}" in res.stdout

    deadline, status = time.time() + 300, ""
    while time.time() < deadline:
        res = run_cli("jobs", "status", job_id, env=env)  # the address is remembered from `submit`
        assert res.returncode == 0, res.stderr
        status = res.stdout.split()[1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(2)
    logs = run_cli("jobs", "logs", job_id, env=env)
    assert status == "SUCCEEDED", logs.stdout[-3000:]

    code, body = _get(f"{ray_head}/api/jobs/")
    assert code == 200 and job_id in [j.get("submission_id") for j in json.loads(body)]
    assert secret.encode() not in body and secret not in logs.stdout
    leaked = [str(p) for p in Path(temp).rglob("*") if p.is_file() and not p.is_symlink()
              and secret.encode() in p.read_bytes()]
    assert leaked == []
    assert logs.returncode == 0 and "results:" in logs.stdout and "done 2/2" in logs.stdout, logs.stdout[-2000:]
    rows = (runs / "jobq" / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",completed," in r for r in rows[1:])

    again = run_cli("submit", "ray", "--address", ray_head, "--config", "configs/sweep/quickstart.yaml",
                    "--runs-dir", str(runs), "name=jobq2", "--job-id", job_id, env=env)  # a duplicate id
    lines = [ln for ln in again.stderr.splitlines() if ln.strip()]
    assert again.returncode == 2 and len(lines) == 1 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert job_id in lines[0] and "already exists" in lines[0], lines[0]

    stop = run_cli("jobs", "stop", job_id, "--address", ray_head, env=env)
    assert stop.returncode == 0 and "not running" in stop.stdout
    missing = run_cli("jobs", "status", "raysubmit_doesnotexist", "--address", ray_head, env=env)
    lines = [ln for ln in missing.stderr.splitlines() if ln.strip()]
    assert missing.returncode == 2 and len(lines) == 1 and "Traceback" not in missing.stderr, missing.stderr
