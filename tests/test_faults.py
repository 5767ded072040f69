"""Issue 11: a careless or hostile user. Bad inputs give one line and exit 2 with nothing written; nothing the
user had is overwritten; one directory has one trainer. Everything runs the real CLI in real processes."""

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, read_rows, read_summary, run_cli

from overparam_dist.rundir import LOCK_FILE, exclusive

QUICK = ["--quiet", "wandb.mode=disabled", "model.width=32", "data.n=16"]


def _tree(root: Path) -> dict[str, str]:
    """Every file under root with the SHA-256 of its bytes."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _one_line_exit_2(res) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("overparam: error:")
    return lines[0]


def test_dotdot_run_dir_never_touches_user_files(tmp_path):
    user = tmp_path / "userdir"
    user.mkdir()
    (user / "config.yaml").write_text("my: own\n")
    (user / "metrics.jsonl").write_text('{"mine": 1}\n')
    (user / "summary.json").write_text('{"status": "completed", "requested_steps": 20}\n')
    before = _tree(tmp_path)
    line = _one_line_exit_2(run_cli("train", *QUICK, "run.dir=nothere/../userdir", cwd=tmp_path))
    assert str(user) in line  # checked as the directory it really is
    assert _tree(tmp_path) == before and not (tmp_path / "nothere").exists()


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_names_are_refused(tmp_path, name):
    line = _one_line_exit_2(run_cli("train", *QUICK, f"run.name={name}", cwd=tmp_path))
    assert "run.name" in line
    assert list(tmp_path.iterdir()) == []


def _bad_trial_input(tmp_path: Path, case: str) -> list[str]:
    if case == "list_yaml":
        (tmp_path / "list.yaml").write_text("- model\n- data\n")
        return ["--config", "list.yaml"]
    if case == "run_dir_is_a_file":
        (tmp_path / "afile").write_text("keep me\n")
        return ["run.dir=afile"]
    if case == "long_name":
        return ["run.name=" + "a" * 300]
    if case == "long_dir_component":
        return ["run.dir=" + "b" * 300 + "/x"]
    if case == "nccl_without_cuda":
        return ["parallel.backend=nccl", "parallel.dp=2"]
    if case == "too_wide":  # ~900 GiB of weights and gradients: refused from the estimate, nothing allocated
        return ["model.width=200000", "model.depth=3"]
    if case == "too_wide_per_rank":  # 40 GiB per rank for 2 local processes
        return ["model.width=60000", "model.depth=3", "parallel.tp=2"]
    if case == "too_much_data":
        return ["data.n=100000000", "data.dim=100"]
    raise AssertionError(case)


@pytest.mark.parametrize("case, expect", [("list_yaml", "list.yaml"), ("run_dir_is_a_file", "is a file"),
                                          ("long_name", "run.name"), ("long_dir_component", "255"),
                                          ("nccl_without_cuda", "parallel.backend"), ("too_wide", "GiB"),
                                          ("too_wide_per_rank", "2 process(es)"), ("too_much_data", "data.n")])
def test_bad_trial_input_is_one_line(tmp_path, case, expect):
    args = _bad_trial_input(tmp_path, case)
    before = _tree(tmp_path)
    line = _one_line_exit_2(run_cli("train", *QUICK, *args, cwd=tmp_path))
    assert expect in line
    assert _tree(tmp_path) == before and not (tmp_path / "runs").exists()


def _sweep_file(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("case, expect", [("empty_grid", "grid"), ("runs_dir_is_a_file", "is a file"),
                                          ("missing_mnist", "mnist"), ("too_wide", "model.width=300000")])
def test_bad_sweep_input_is_one_line_before_ray(tmp_path, case, expect):
    spec = {"grid": {"model.width": [16, 32]}, "overrides": {"train.steps": 2}}
    runs = tmp_path / "runs"
    if case == "empty_grid":
        spec["grid"] = {}
    elif case == "too_wide":
        spec["grid"]["model.width"] = [16, 300000]
    elif case == "runs_dir_is_a_file":
        runs.write_text("a file\n")
    elif case == "missing_mnist":
        spec["overrides"].update({"data.name": "mnist", "data.root": str(tmp_path / "no-data")})
    path = _sweep_file(tmp_path, spec)
    before = _tree(tmp_path)
    t0 = time.monotonic()
    line = _one_line_exit_2(run_cli("sweep", "--config", str(path), "--runs-dir", str(runs),
                                    env={"RAY_ADDRESS": ""}))
    assert expect in line
    assert _tree(tmp_path) == before
    assert time.monotonic() - t0 < 30  # refused before any Ray starts (a private Ray takes longer on 2 cores)


@pytest.mark.slow
def test_sweep_too_big_for_the_cluster_leaves_no_directory(tmp_path, ray_address):
    path = _sweep_file(tmp_path, {"grid": {"model.width": [16]}, "overrides": {"train.steps": 2},
                                  "resources": {"cpus": 100}})
    line = _one_line_exit_2(run_cli("sweep", "--config", str(path), "--runs-dir", str(tmp_path / "runs"),
                                    "--address", ray_address))
    assert "more than the cluster has" in line
    assert not (tmp_path / "runs").exists()


def _wait_for_lock(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not ((run / LOCK_FILE).is_file() and (run / LOCK_FILE).read_text().split()[:1] == [str(proc.pid)]):
        assert proc.poll() is None and time.time() < deadline, "the first trainer never took the lock"
        time.sleep(0.05)


@pytest.mark.slow
def test_one_trainer_per_run_dir_and_a_kill_releases_it(tmp_path):
    run = tmp_path / "run"
    args = [sys.executable, "-m", "launcher", "train", *QUICK, f"run.dir={run}", "train.steps=100000",
            "train.stop_at_fit=false", "checkpoint.every=200", "metrics.every=200"]
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_lock(run, first)
        line = _one_line_exit_2(run_cli("train", *QUICK, f"run.dir={run}", "train.steps=100000",
                                        "train.stop_at_fit=false", "checkpoint.every=200", "metrics.every=200"))
        assert f"PID {first.pid} on {socket.gethostname()}" in line
        while not list((run / "checkpoints").glob("step_*")):  # let it finish a checkpoint, then kill it
            assert first.poll() is None
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The kernel released the lock: a rerun takes it and resumes from the last checkpoint.
    last = max(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))
    res = run_cli("train", *QUICK, f"run.dir={run}", f"train.steps={last + 200}", "train.stop_at_fit=false",
                  "checkpoint.every=200", "metrics.every=200")
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_summary(run)["steps"] == last + 200 and read_summary(run)["status"] == "completed"


def test_a_second_sweep_driver_is_refused(tmp_path):
    path = _sweep_file(tmp_path, {"name": "held", "grid": {"model.width": [16]}, "overrides": {"train.steps": 2}})
    sdir = tmp_path / "runs" / "held"
    with exclusive(sdir, "sweep directory"):  # this process holds it, as a running driver would
        line = _one_line_exit_2(run_cli("sweep", "--config", str(path), "--runs-dir", str(tmp_path / "runs"),
                                        "--resume", env={"RAY_ADDRESS": ""}))
    assert f"PID {os.getpid()}" in line and "sweep directory" in line
    assert not sdir.exists()  # created only for the lock, and removed with it


@pytest.mark.slow
def test_rerun_with_other_stop_rules_continues_or_says_so(tmp_path):
    run = tmp_path / "run"
    common = [*QUICK, f"run.dir={run}", "train.steps=60", "metrics.every=10", "data.target=regression",
              "train.target_loss=0.05", "train.lr=8"]  # the step it was written for: the target falls before 60
    assert run_cli("train", *common).returncode == 0
    first = read_summary(run)
    assert first["steps"] < 60 and first["stop_rules"]["target_loss"] == 0.05  # stopped at the target

    same = run_cli("train", *common)  # the same rules: nothing to do, and it says so
    assert same.returncode == 0 and "already finished" in same.stdout and "nothing was trained" in same.stdout
    assert f"add run.dir={run}-2 (a new trial beside it)" in same.stdout  # how to train it again anyway
    assert read_summary(run) == first

    res = run_cli("train", *common, "train.target_loss=0")  # the new rules ask for more: it trains on
    assert res.returncode == 0, res.stderr[-2000:]
    after = read_summary(run)
    assert after["steps"] == 60 and after["stop_rules"] == {"steps": 60, "stop_at_fit": True, "target_loss": 0.0,
                                                         "target_ratio": 0.0}
    steps = [r["step"] for r in read_rows(run)]
    assert steps == sorted(set(steps)) and steps[-1] == 60  # each step once, continued from the checkpoint


def _corrupt(step_dir: Path, how: str) -> None:
    if how == "truncated_distcp":
        f = next(step_dir.glob("*.distcp"))
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "bad_metadata":
        (step_dir / ".metadata").write_bytes(b"not a pickle")
    elif how == "bad_trainer_state":
        (step_dir / "trainer_state.json").write_text('{"step": 20, "conv": ')
    elif how == "flipped_byte":
        f = next(step_dir.glob("*.distcp"))
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x40  # inside the tensor data: loads without error, unless verified
        f.write_bytes(bytes(data))
    elif how == "no_manifest":
        (step_dir / "manifest.json").unlink()
    else:
        raise AssertionError(how)


CKPT = [*QUICK, "data.target=regression", "train.stop_at_fit=false", "checkpoint.every=10", "metrics.every=5",
        "model.width=64", "checkpoint.keep=3"]


@pytest.mark.slow
def test_bad_checkpoints_fall_back_to_the_previous_one(tmp_path):
    import shutil

    ref = tmp_path / "ref"
    assert run_cli("train", *CKPT, f"run.dir={ref}", "train.steps=30").returncode == 0
    base = tmp_path / "base"  # checkpoints at 10 and 20; the rerun with train.steps=30 resumes from 20
    assert run_cli("train", *CKPT, f"run.dir={base}", "train.steps=20").returncode == 0
    assert sorted(p.name for p in (base / "checkpoints").iterdir()) == ["step_00000010", "step_00000020"]
    want = read_summary(ref)
    for how in ("truncated_distcp", "bad_metadata", "bad_trainer_state", "flipped_byte", "no_manifest"):
        run = tmp_path / how
        shutil.copytree(base, run)
        _corrupt(run / "checkpoints" / "step_00000020", how)
        res = run_cli("train", *CKPT, f"run.dir={run}", "train.steps=30")
        assert res.returncode == 0, (how, res.stderr[-2000:])
        warnings = [ln for ln in res.stderr.splitlines() if "warning" in ln]
        assert len(warnings) == 1 and "step_00000020" in warnings[0], (how, res.stderr)
        got = read_summary(run)
        assert got["steps"] == 30 and got["train/loss"] == want["train/loss"], how  # as if never interrupted
        assert [r["step"] for r in read_rows(run)] == [r["step"] for r in read_rows(ref)], how
        assert [r["train/loss"] for r in read_rows(run)] == [r["train/loss"] for r in read_rows(ref)], how


def _listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP listeners owned by these processes (ss -ltnp)."""
    import re

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[3] for line in out.splitlines()
            if any(int(p) in pids for p in re.findall(r"pid=(\d+)", line))]


def _lan_address() -> str | None:
    """This host's first global IPv4 address, if it has one."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    addrs = [line.split()[3].split("/")[0] for line in out.stdout.splitlines() if len(line.split()) > 3]
    return addrs[0] if out.returncode == 0 and addrs else None


@pytest.mark.slow
@pytest.mark.parametrize("host_name", ["as it is", "on the LAN"])
def test_a_data_parallel_trial_listens_on_loopback_only(tmp_path, host_name):
    """A local dp=2 trial's listeners: torch's TCP stores bind every interface whatever host they are given, gloo
    binds the address the host's name resolves to. Both stay on loopback (overparam_dist/parallel/stores.py). "on the
    LAN": the host's name resolves to its LAN address, as on most machines (not this one, whose /etc/hosts maps it to
    127.0.0.1): the trial runs in its own UTS and mount namespaces, with its own host name and /etc/hosts."""
    from chaos_checks import listeners_of, loopback, process_tree

    cmd = [sys.executable, "-m", "launcher", "train", "--quiet", "parallel.dp=2", "model.width=256", "train.steps=400",
           "train.stop_at_fit=false", "data.target=regression", "wandb.mode=disabled", f"run.dir={tmp_path / 'run'}"]
    if host_name == "on the LAN":
        lan = _lan_address()
        if os.geteuid() != 0 or not shutil.which("unshare") or lan is None:
            pytest.skip("needs root, unshare and a LAN address for the host's name")
        (tmp_path / "hosts").write_text(f"127.0.0.1 localhost\n{lan} overparam-lan-host\n")
        cmd = ["unshare", "--uts", "--mount", "sh", "-c", f'mount --bind "{tmp_path / "hosts"}" /etc/hosts && '
               'hostname overparam-lan-host && exec "$@"', "sh", *cmd]
    with open(tmp_path / "err", "w") as err:
        trial = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        seen: set[tuple[str, int]] = set()
        while trial.poll() is None:
            seen |= {(addr, port) for _, addr, port in listeners_of(process_tree(trial.pid))}
            time.sleep(0.05)
    assert trial.returncode == 0, (tmp_path / "err").read_text()[-3000:]
    assert len(seen) >= 4, seen  # the elastic rendezvous store, and gloo's listeners in both ranks
    assert [a for a in seen if not loopback(a[0])] == [], seen


def test_a_store_is_bound_to_an_address_and_a_host_name_keeps_torch_s_binding():
    import datetime

    from chaos_checks import listeners_of

    from overparam_dist.parallel.stores import BoundTCPStore, _bound_socket

    store = BoundTCPStore("127.0.0.1", 0, 1, True, datetime.timedelta(seconds=30))
    client = BoundTCPStore("127.0.0.1", store.port, 1, False, datetime.timedelta(seconds=30))
    store.set("k", "v")
    assert client.get("k") == b"v"
    on_port = [addr for _, addr, port in listeners_of([os.getpid()]) if port == store.port]
    assert on_port == ["127.0.0.1"], on_port
    # A name may resolve to loopback here and to the node's address elsewhere: not bound (torch's wildcard)
    assert _bound_socket(socket.gethostname(), 0) is None
    fd, _ = _bound_socket("localhost", 0)
    os.close(fd)


@pytest.mark.slow
@pytest.mark.services
def test_private_ray_listens_on_loopback_only_and_a_killed_driver_is_reaped(tmp_path):
    import glob

    from launcher.sweep.cluster import DRIVER_FILE, EMBEDDED_PREFIX, _pids_of_session, reap_stale_embedded

    path = _sweep_file(tmp_path, {"name": "net", "grid": {"model.width": [64]},
                                  "overrides": {"train.steps": 10**7, "train.stop_at_fit": False, "train.lr": 0.01,
                                                "metrics.every": 50, "data.n": 16}})
    driver = subprocess.Popen([sys.executable, "-m", "launcher", "sweep", "--config", str(path), "--runs-dir",
                               str(tmp_path / "runs")], cwd=ROOT, env={**os.environ, "RAY_ADDRESS": ""},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, temp = time.time() + 240, None
        metrics = tmp_path / "runs" / "net" / "trial" / "metrics.jsonl"
        while not (temp and metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
            assert driver.poll() is None and time.time() < deadline, "the sweep never started training"
            for d in glob.glob(f"{EMBEDDED_PREFIX}*"):
                with contextlib.suppress(OSError):
                    if Path(d, DRIVER_FILE).read_text().split()[0] == str(driver.pid):
                        temp = d
            time.sleep(0.2)
        session = set(_pids_of_session(temp))
        # Ray's agents rename themselves (ray::DashboardAgent): found by their open log files, not their command line
        names = {(Path("/proc") / str(p) / "cmdline").read_bytes().split(b"\0")[0].decode() for p in session}
        assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= {n.strip() for n in names}, names
        addresses = _listening(session | {driver.pid})
        assert len(addresses) >= 4  # gcs_server, raylet, workers, dashboard: all of them seen
        assert [a for a in addresses if not a.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:"))] == []
        assert [a for a in addresses if a.endswith(":52365")] == []  # the agent's default port is not fixed
        print("listeners of the private Ray:", sorted(addresses))
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert temp in reap_stale_embedded()  # what the next sweep does first
    deadline = time.time() + 15
    while _pids_of_session(temp):
        assert time.time() < deadline, "processes of the killed driver's Ray survived (agents included)"
        time.sleep(0.2)
    assert not Path(temp).exists()


def test_memory_floor_on_cuda_reads_the_rank_s_own_device(monkeypatch):
    """CUDA cannot run here: its two queries are stubbed. The floor is compared with the total memory of the device
    of LOCAL_RANK, without creating a CUDA context in the launcher."""
    import types

    import torch

    from overparam_dist.config import ConfigError, load_config
    from overparam_dist.footprint import GIB, bytes_per_rank, check_fits_memory

    cfg = load_config(None, ["model.width=60000", "model.depth=3", "train.device=cuda", "parallel.dp=2"])
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: asked.append(i) or types.SimpleNamespace(total_memory=16 * GIB))
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ConfigError) as err:
        check_fits_memory(cfg)
    assert asked == [1] and "16.0 GiB is available (on CUDA device 1)" in str(err.value)
    assert f"{bytes_per_rank(cfg) / GIB:.1f} GiB" in str(err.value)
    small = load_config(None, ["model.width=4096", "train.device=cuda"])
    check_fits_memory(small)  # 4096^2 x 2 layers x 2 (weights, grads) x 4 bytes = 0.25 GiB: fits in 16
