"""Issue 11, storage: a full disk, a read-only run directory, and a report over files it cannot read or write.
The file systems are real: small tmpfs mounts made by the test (root is needed to mount; without it these skip)."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import read_rows, read_summary, run_cli
from test_faults import QUICK, _one_line_exit_2, _tree

RUN = [*QUICK, "train.steps=100", "train.stop_at_fit=false", "checkpoint.every=10", "data.target=regression"]


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> a fresh tmpfs of that size under tmp_path; remount(opts) changes it; unmounted after."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = []

    def mount(size: str) -> Path:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
        mounted.append(mnt)
        return mnt

    def remount(opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)

    mount.remount = remount
    yield mount
    for m in mounted:
        subprocess.run(["umount", str(m)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("dp", [1, 2])
def test_disk_full_is_one_line_loses_nothing_and_resumes(tmp_path, tmpfs, dp):
    ref = tmp_path / "ref"
    assert run_cli("train", *RUN, f"run.dir={ref}").returncode == 0
    run = tmpfs("64k") / "run"  # room for config, metrics and one checkpoint, not two
    line = _one_line_exit_2(run_cli("train", *RUN, f"run.dir={run}", f"parallel.dp={dp}"))
    assert "no space left" in line and str(run) in line
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step_00000010"]  # the complete one stays; the half-written one is gone
    assert [r["step"] for r in read_rows(run)] == [0, 10]

    tmpfs.remount("size=8m")  # room again: the same command resumes and ends as if never interrupted
    res = run_cli("train", *RUN, f"run.dir={run}", f"parallel.dp={dp}")
    assert res.returncode == 0, res.stderr[-2000:]
    got, want = read_summary(run), read_summary(ref)
    assert got["steps"] == want["steps"] == 100
    assert [r["step"] for r in read_rows(run)] == [r["step"] for r in read_rows(ref)]
    tol = 0 if dp == 1 else 1e-6  # dp=2 sums the gradient in another order
    assert abs(got["train/loss"] - want["train/loss"]) <= tol * abs(want["train/loss"])


def test_read_only_run_directory_is_one_line(tmp_path, tmpfs):
    mnt = tmpfs("1m")
    done = mnt / "done"
    assert run_cli("train", *QUICK, f"run.dir={done}", "train.steps=5").returncode == 0
    tmpfs.remount("ro")
    before = _tree(mnt)
    for run in (done, mnt / "new", mnt / "new" / "deeper"):
        line = _one_line_exit_2(run_cli("train", *QUICK, f"run.dir={run}", "train.steps=10"))
        assert "not writable" in line and "read-only" in line
    assert _tree(mnt) == before


def test_a_sweep_trial_s_pid_file_on_a_full_disk_is_skipped(tmp_path, tmpfs):
    """<sweep>/.workers/<trial>.pid is for operators and tests: on a full disk writing it raised a raw OSError that
    failed the trial with a traceback; now it is skipped (and written once there is room), and the trial's own writes
    meet the disk's state (test_disk_full_is_one_line_loses_nothing_and_resumes)."""
    from launcher.sweep.local_trial import write_pid

    mnt = tmpfs("64k")
    fd = os.open(mnt / "fill", os.O_WRONLY | os.O_CREAT)
    with pytest.raises(OSError):
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    write_pid(str(mnt / ".workers" / "trial.pid"))  # ENOSPC: no exception
    assert not (mnt / ".workers" / "trial.pid").exists()
    (mnt / "fill").unlink()
    write_pid(str(mnt / ".workers" / "trial.pid"))
    assert (mnt / ".workers" / "trial.pid").read_text() == f"{os.getpid()}\n"


def test_report_on_unreadable_results_or_an_unwritable_out_is_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    assert run_cli("train", *QUICK, f"run.dir={sweep / 't1'}", "train.steps=5").returncode == 0
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    before = _tree(tmp_path)
    line = _one_line_exit_2(run_cli("report", str(sweep), "--out", str(afile)))
    assert "is a file" in line and str(afile) in line
    assert _tree(tmp_path) == before

    (sweep / "results.csv").write_bytes(b"trial,status\n\xff\xfe,completed\n")  # not UTF-8
    before = _tree(tmp_path)
    line = _one_line_exit_2(run_cli("report", str(sweep)))
    assert "results.csv" in line and "UTF-8" in line
    assert _tree(tmp_path) == before and not (sweep / "report").exists()

    (sweep / "results.csv").unlink()  # rebuilt from the trial directory: the report is written
    res = run_cli("report", str(sweep))
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads((sweep / "report" / "figures.json").read_text())
    assert figures and (sweep / "report" / "index.html").is_file()
