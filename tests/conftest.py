import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# `make test` runs two pytest-xdist workers on 2 cores: each runs torch, and every process it starts, on one thread
# (as torchrun does for several processes). Two threads each would oversubscribe the cores: a test that took 66 s
# alone took 174 s beside the other worker.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# Tests opt in to W&B explicitly; everything else runs without it (and never online).
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run the real `overparam` console entry point in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture
def cli():
    return run_cli


# Local Ray clusters started by tests and the clients talking to them agree on auth (Ray >= 2.52 defaults to
# token auth): disabled, unless the environment already says otherwise.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def ray_address():
    """ONE private local Ray for the whole pytest session, started by the first test that asks for it.

    This process is its driver (`ray.init(address="local")` never joins another Ray instance on the
    machine); `ray.shutdown()` at the end stops exactly the processes it started. Yields the GCS address,
    for `overparam sweep --address` in subprocesses; in-process sweeps reuse the connection.
    """
    import shutil

    import ray

    tmp = f"/tmp/opr-t{os.getpid()}"  # AF_UNIX socket paths must stay short: never pytest's tmp_path
    ray.init(address="local", _temp_dir=tmp, num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="ERROR", log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def kill_after_checkpoint(args: list[str], run_dir: Path, step: int, env: dict | None = None,
                          timeout: float = 180) -> None:
    """Start a trial command, SIGKILL it (by PID) once checkpoint `step` is on disk; fail if it ends first."""
    import signal
    import time

    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not (run_dir / "checkpoints" / f"step_{step:08d}").is_dir():
        assert proc.poll() is None and time.time() < deadline, "trial ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


# `make test-fast` runs `-m "not slow"`: the unit and exactness tests. Multi-process tests say @pytest.mark.slow.
# A test that starts or uses a Ray or a Slurm cluster (one of these fixtures, or @pytest.mark.services) is slow, and
# `make test` runs all of them one after another on one pytest-xdist worker (group "services"), while the other
# worker runs the rest: they share the session's Ray and Slurm, and two Rays at once would contend for the
# dashboard agent's fixed port.
SERVICE_FIXTURES = {"ray_address", "ray_nodes", "ray_head", "slurm_cluster", "jobs", "two_node_slurm"}


def pytest_itemcollected(item):  # as each test is collected: before pytest-xdist reads the xdist_group markers
    if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("services"):
        item.add_marker(pytest.mark.slow)
        item.add_marker(pytest.mark.xdist_group("services"))
