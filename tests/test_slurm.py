"""Slurm submission against a real one-node Slurm cluster on localhost (slurm/local-cluster.sh).

The session fixture starts the cluster when it is not running (installing Slurm with apt-get on a fresh machine)
and stops it at the end only if it started it. Every job a test submits is cancelled when the test ends.
"""

import contextlib
import io
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, read_rows, run_cli

from launcher import slurm
from overparam_dist.config import ConfigError, load_config

pytestmark = pytest.mark.slow

CLUSTER = ROOT / "slurm" / "local-cluster.sh"
SLURM_DIR = Path(os.environ.get("OVERPARAM_SLURM_DIR", "/tmp/overparam-slurm"))
SMALL = ["model.width=128", "train.steps=10", "data.target=regression", "metrics.every=1", "wandb.mode=disabled"]
FINISHED = slurm.FINISHED_STATES

# Until launcher/cli.py wires `submit slurm` / `jobs`, the tests drive the same functions through this parser.
_WRAPPER = """
import sys
from launcher import cli, slurm
from overparam_dist.config import ConfigError
p = cli._Parser(prog="overparam")
slurm.register(p.add_subparsers(dest="command", required=True, parser_class=cli._Parser))
args = p.parse_args(sys.argv[1:])
try:
    sys.exit(args.fn(args))
except ConfigError as exc:
    sys.exit(cli._fail(str(exc)))
"""


def _cli_has_slurm() -> bool:
    from launcher.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(["submit", "slurm", "--trial", "--dry-run"])
        from launcher import cli

        return any(module == "launcher.slurm" for _, module in getattr(cli, "JOB_BACKENDS", ()))
    except SystemExit:
        return False


CLI_WIRED = _cli_has_slurm()


def overparam(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`overparam ARGS` in a subprocess: the real CLI once it has `submit slurm`, else the wrapper above."""
    if CLI_WIRED:
        return run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-c", _WRAPPER, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def submit(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return overparam("submit", "slurm", "--trial", *args, cwd=cwd, env=env)


def job_id_of(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 0, res.stderr
    m = re.match(r"submitted Slurm job (\d+):", res.stdout)
    assert m, res.stdout
    return m.group(1)


def wait_finished(job_id: str, timeout: float = 120) -> list[str]:
    """Poll `scontrol show job` until the job is finished; returns the distinct states seen, in order."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = slurm.job_state(job_id)
        if not seen or seen[-1] != state:
            seen.append(state)
        if state in FINISHED:
            return seen
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout} s: states {seen}; "
                         f"log:\n{slurm.job_logs(job_id)}")


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("overparam: error: ")
    return lines[0]


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running local cluster; SLURM_CONF points at it for this session (and the jobs it submits)."""
    started = False
    status = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True, timeout=60)
    if status.returncode != 0:
        res = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
        if res.returncode == 3:  # not root / no apt-get / apt-get failed: Slurm cannot be installed here
            pytest.skip(f"no local Slurm cluster: {res.stderr.strip()}")
        assert res.returncode == 0, f"slurm/local-cluster.sh start failed:\n{res.stdout}\n{res.stderr}"
        started = True
    mp = pytest.MonkeyPatch()
    mp.setenv("SLURM_CONF", str(SLURM_DIR / "slurm.conf"))
    yield SLURM_DIR / "slurm.conf"
    mp.undo()
    if started:
        subprocess.run([str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


@pytest.fixture
def jobs(slurm_cluster):
    """Collects the ids a test submits and cancels whatever is still alive when it ends."""
    ids: list[str] = []
    yield ids
    for job_id in ids:
        with contextlib.suppress(ConfigError):
            if slurm.job_state(job_id) not in FINISHED:
                slurm.cancel(job_id)


def test_trial_runs_across_two_srun_tasks_and_matches_a_local_run(tmp_path, jobs):
    remote, local = tmp_path / "remote", tmp_path / "local"
    res = submit("--cpus-per-task=1", "parallel.dp=2", f"run.dir={remote}", *SMALL, cwd=tmp_path)
    job_id = job_id_of(res)
    jobs.append(job_id)
    assert f"overparam jobs status {job_id}" in res.stdout and f"overparam jobs logs {job_id}" in res.stdout
    log = tmp_path / "remote.slurm" / f"{job_id}.out"
    assert str(log) in res.stdout

    # The same config trained locally (2 processes of torch's launcher), while the job runs.
    local_proc = subprocess.Popen([sys.executable, "-m", "launcher", "train", "--quiet", "parallel.dp=2",
                                   f"run.dir={local}", *SMALL], cwd=tmp_path, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
    seen = wait_finished(job_id)
    _, err = local_proc.communicate(timeout=300)
    assert local_proc.returncode == 0, err

    assert seen[0] in ("PENDING", "CONFIGURING", "RUNNING"), seen
    assert seen[-1] == "COMPLETED", (seen, log.read_text())
    assert set(seen) <= {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "COMPLETED"}, seen
    text = log.read_text()
    assert "2 tasks, MASTER_ADDR=" in text and "exit code 0" in text, text

    a, b = read_rows(remote), read_rows(local)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(11))
    for ra, rb in zip(a, b):
        assert ra["train/loss"] == pytest.approx(rb["train/loss"], rel=1e-5), (ra, rb)

    st = overparam("jobs", "status", job_id, cwd=tmp_path)
    assert st.returncode == 0 and st.stdout.startswith("COMPLETED job " + job_id), st.stdout + st.stderr
    lg = overparam("jobs", "logs", job_id, cwd=tmp_path)
    assert lg.returncode == 0 and lg.stdout == text


def test_config_values_are_quoted_never_executed(tmp_path, jobs):
    tag = secrets.token_hex(4)
    # run.name may not hold '/', so those payloads touch files relative to the working directory.
    name = f"x; touch pwned-{tag}-a $(touch pwned-{tag}-b) `touch pwned-{tag}-c` && touch pwned-{tag}-d"
    project = f"p'; touch /tmp/pwned-{tag}-e; echo '\"; touch /tmp/pwned-{tag}-f; \""  # breaks naive quoting
    args = [f"run.name={name}", f"wandb.project={project}", "train.steps=2", "model.width=64", "wandb.mode=disabled"]

    dry = submit("--dry-run", *args, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    script = tmp_path / "dry.sbatch"
    script.write_text(dry.stdout)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    job_id = job_id_of(submit(*args, cwd=tmp_path))
    jobs.append(job_id)
    assert wait_finished(job_id)[-1] == "COMPLETED", slurm.job_logs(job_id)
    run = tmp_path / "runs" / name  # the trial ran under its literal name, with its literal values
    assert (run / "summary.json").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["run"]["name"] == name and saved["wandb"]["project"] == project
    for where in (tmp_path, ROOT, Path("/tmp")):
        assert not list(where.glob(f"pwned-{tag}*")), where


def test_dry_run_prints_exactly_the_submitted_script(tmp_path, jobs):
    args = ["--nodes=1", "--cpus-per-task=1", "--time=0:10:00", "--signal-seconds=60", "--mem=500M",
            "--sbatch-arg=--hold", "parallel.dp=2", *SMALL]
    dry = submit("--dry-run", *args, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    real = submit(*args, cwd=tmp_path)
    job_id = job_id_of(real)
    jobs.append(job_id)
    (written,) = (tmp_path / "runs").glob(f"*.slurm/{job_id}.sbatch")
    assert written.read_bytes() == dry.stdout.encode()
    assert "#SBATCH --hold\n" in dry.stdout and "#SBATCH --signal=B:USR1@60\n" in dry.stdout

    info = slurm.job_info(job_id)  # held: submitted, never started
    assert info["JobState"] == "PENDING" and info["TimeLimit"] == "00:10:00"
    cancelled = overparam("jobs", "stop", job_id, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert wait_finished(job_id, timeout=30)[-1] == "CANCELLED"


def test_missing_sbatch_is_one_line_exit_2(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    res = submit("train.steps=2", cwd=tmp_path, env={"PATH": str(empty)})
    assert "sbatch" in one_error_line(res) and "not found" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_controller_down_is_one_line_exit_2(tmp_path, slurm_cluster):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = "".join(f"SlurmctldPort={port}\n" if line.startswith("SlurmctldPort=") else line
                   for line in slurm_cluster.read_text().splitlines(keepends=True))
    dead = tmp_path / "dead.conf"
    dead.write_text(conf)
    res = submit("train.steps=2", cwd=tmp_path, env={"SLURM_CONF": str(dead)})
    line = one_error_line(res)
    assert "Unable to contact slurm controller" in line, line
    assert not (tmp_path / "runs").exists()

    res = submit("train.steps=2", cwd=tmp_path, env={"SLURM_CONF": str(tmp_path / "missing.conf")})
    assert "SLURM_CONF" in one_error_line(res)


@pytest.mark.parametrize("args, needle", [
    (["parallel.dp=2", "--nodes=3"], "--nodes"),
    (["--time=soon"], "--time"),
    (["--time=1", "--signal-seconds=120"], "--signal-seconds"),
    (["--job-name=a b"], "--job-name"),
    (["--mem=lots"], "--mem"),
    (["--sbatch-arg=exclusive"], "--sbatch-arg"),
    (["parallel.dp=2", "--gpus-per-node=1"], "GPU"),
    (["model.widht=3"], "model.widht"),
])
def test_bad_submission_is_one_line_exit_2(tmp_path, args, needle):
    res = submit("--dry-run", *args, cwd=tmp_path)
    assert needle in one_error_line(res)




def test_unknown_job_is_one_line_exit_2(tmp_path, slurm_cluster):
    assert "not a Slurm job id" in one_error_line(overparam("jobs", "status", "abc", "--backend", "slurm",
                                                            cwd=tmp_path))
    assert "unknown" in one_error_line(overparam("jobs", "logs", "999999", cwd=tmp_path))


@pytest.mark.parametrize("flag", ["--partition", "--account", "--qos", "--constraint"])
def test_hostile_sbatch_option_values_are_refused(tmp_path, flag):
    hostile = "x\\' --output=/tmp/CLOBBER --comment=pwned #"
    assert flag in one_error_line(submit("--dry-run", f"{flag}={hostile}", cwd=tmp_path))
    assert "--sbatch-arg" in one_error_line(submit("--dry-run", f"--sbatch-arg=--comment={hostile}", cwd=tmp_path))


def test_hostile_run_dir_reaches_sbatch_as_one_argument(tmp_path, jobs):
    """A run.dir that breaks out of shell quoting on a #SBATCH line (sbatch honours a backslash inside single
    quotes): submitted held to the real Slurm, the job has exactly the intended options and log path."""
    tag = secrets.token_hex(4)
    clobber = Path(f"/tmp/CLOBBER-{tag}")
    hostile = f"runs/x\\'\" --output={clobber} --comment=pwned-{tag} #"
    res = submit("--sbatch-arg=--hold", f"run.dir={hostile}", "train.steps=2", "model.width=16", cwd=tmp_path)
    job_id = job_id_of(res)
    jobs.append(job_id)
    info = slurm.job_info(job_id)
    assert info["JobState"] == "PENDING"  # held
    assert info.get("Comment", "(null)") == "(null)"  # the smuggled --comment never became an option
    want = (tmp_path / load_config(None, [f"run.dir={hostile}"]).run.dir).resolve()  # as the config reads it
    assert info["StdOut"] == str(want.parent / (want.name + ".slurm") / f"{job_id}.out")
    assert not clobber.exists()
    assert overparam("jobs", "stop", job_id, cwd=tmp_path).returncode == 0


def test_render_quotes_every_value_and_checks_placeholders():
    out = slurm.render("a {{x}} b {{y}}\n{{opts}}\nc\n", {"x": "it's", "y": ["1", "two words"]},
                       {"opts": ["--p=a b", "--q"]})
    assert out == "a 'it'\"'\"'s' b 1 'two words'\n#SBATCH '--p=a b'\n#SBATCH --q\nc\n"
    assert slurm.render("{{opts}}\nc\n", {}, {"opts": []}) == "c\n"
    assert slurm.render("{{x}}", {"x": "{{x}}"}) == "'{{x}}'"  # substituted text is never rendered again
    for template, values in [("{{x}}", {}), ("a", {"x": "1"}), ("{{x}}", {"x": "a\nb"})]:
        with pytest.raises(ConfigError):
            slurm.render(template, values)
    assert slurm.time_limit_seconds("1-02:03:04") == 93784 and slurm.time_limit_seconds("90") == 5400
    assert slurm.time_limit_seconds("UNLIMITED") is None


def test_cluster_script_is_idempotent(slurm_cluster):
    res = subprocess.run([str(CLUSTER), "start"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "already running" in res.stdout, res.stdout + res.stderr
    res = subprocess.run([str(CLUSTER), "status"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert shutil.which("sbatch")


# ------------------------------------------------------------------------------------------------ sweeps
QUICKSTART = ROOT / "configs" / "sweep" / "quickstart.yaml"
# One seed of the quickstart's three: the same 8-trial grid shape as a sweep job, a third of the time.
SWEEP_JOB = ["--config", str(QUICKSTART), "--cpus-per-node=2", "--ray-auth=disabled", "wandb.mode=disabled",
             "grid.seed=[0]"]


def submit_sweep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return overparam("submit", "slurm", *args, cwd=cwd)


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def job_ray_processes(job_id: str) -> list[int]:
    """PIDs of processes of the job's Ray (its temp dir is /tmp/opr-slurm-<job id>)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if f"opr-slurm-{job_id}".encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids


def test_sweep_job_runs_ray_in_the_allocation_and_every_trial(tmp_path, jobs):
    tag = secrets.token_hex(4)
    project = f"p'; touch /tmp/pwned-{tag}-a; echo '$(touch /tmp/pwned-{tag}-b)`touch pwned-{tag}-c`"
    args = [*SWEEP_JOB, "train.steps=20", "metrics.every=10", f"wandb.project={project}"]
    dry = submit_sweep("--dry-run", *args, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    (tmp_path / "dry.sbatch").write_text(dry.stdout)
    check = subprocess.run(["bash", "-n", str(tmp_path / "dry.sbatch")], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    res = submit_sweep(*args, cwd=tmp_path)
    job_id = job_id_of(res)
    jobs.append(job_id)
    log = tmp_path / "runs" / "quickstart.slurm" / f"{job_id}.out"
    assert "sweep quickstart, 8 trial(s)" in res.stdout and str(log) in res.stdout, res.stdout
    seen = wait_finished(job_id, timeout=300)
    text = log.read_text()
    assert seen[0] in ("PENDING", "CONFIGURING", "RUNNING") and seen[-1] == "COMPLETED", (seen, text)

    assert "Ray runtime started" in text and "Ray cluster up: 1 node(s)" in text, text
    assert re.search(r"\n    ssh -N -L 8265:[0-9.]+:\d+ \S+@\S+ +then open http://localhost:8265\n", text), text
    assert "[quickstart] 8 trial(s)" in text and "sweep driver ended with exit code 0" in text, text
    rows = read_csv(tmp_path / "runs" / "quickstart" / "results.csv")
    assert sorted(r["trial"] for r in rows) == sorted(f"w{w}-d{d}" for w in (32, 64, 128, 256) for d in (1, 2))
    assert {r["status"] for r in rows} == {"completed"} and {r["steps"] for r in rows} == {"20"}, rows
    saved = yaml.safe_load((tmp_path / "runs" / "quickstart" / "w32-d1" / "config.yaml").read_text())
    assert saved["wandb"]["project"] == project  # the literal value reached the trial
    for where in (tmp_path, ROOT, Path("/tmp")):
        assert not list(where.glob(f"pwned-{tag}*")), where
    assert not job_ray_processes(job_id)


def test_sweep_dry_run_prints_exactly_the_submitted_script(tmp_path, jobs):
    args = ["--config", str(QUICKSTART), "--time=0:10:00", "--signal-seconds=60", "--ray-port=21000",
            "--sbatch-arg=--hold", "train.steps=5", "name=held"]
    dry = submit_sweep("--dry-run", *args, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing

    job_id = job_id_of(submit_sweep(*args, cwd=tmp_path))
    jobs.append(job_id)
    written = tmp_path / "runs" / "held.slurm" / f"{job_id}.sbatch"
    assert written.read_bytes() == dry.stdout.encode()
    for line in ("#SBATCH --hold\n", "#SBATCH --signal=B:USR1@60\n", "#SBATCH --requeue\n",
                 "#SBATCH --cpus-per-task=1\n", "RAY_PORT=21000", "export RAY_AUTH_MODE=token\n",
                 f"--runs-dir {tmp_path / 'runs'} train.steps=5 name=held &\n"):
        assert line in dry.stdout, line
    assert slurm.job_info(job_id)["JobState"] == "PENDING"  # held: never started
    assert overparam("jobs", "stop", job_id, cwd=tmp_path).returncode == 0
    assert wait_finished(job_id, timeout=30)[-1] == "CANCELLED"


@pytest.mark.parametrize("args, needle", [
    ([], "--config"),
    (["--config", str(QUICKSTART), "grid.model.width=[64,64]"], "lists a value twice"),
    (["--config", str(QUICKSTART), "model.widht=3"], "model.widht"),
    (["--config", str(ROOT / "configs" / "experiment" / "paper_fc.yaml")], "--trial"),
    (["--config", str(QUICKSTART), "--cpus-per-task=2"], "--cpus-per-node"),
    (["--config", str(QUICKSTART), "resources.cpus=4", "--cpus-per-node=2"], "resources"),
    (["--config", str(QUICKSTART), "--ray-port=80"], "--ray-port"),
    (["--trial", "--runs-dir=elsewhere"], "--runs-dir"),
])
def test_bad_sweep_submission_is_one_line_exit_2(tmp_path, args, needle):
    res = submit_sweep("--dry-run", *args, cwd=tmp_path)
    assert needle in one_error_line(res)
    assert not (tmp_path / "runs").exists()
