"""Issue 28, item 0: hostile files and symlinks in a run directory never reach the user's files. A link planted where
the project writes is refused in one line (exit 2), a link at an atomic write's temporary name is replaced and never
written through, checkpoint rotation deletes only checkpoints with a manifest of ours, and a manifest is validated as
a schema, so a bad one falls back to the checkpoint before it like a corrupt one."""

import hashlib
import json
import os

from conftest import read_summary, run_cli

from overparam_dist import checkpoint
from overparam_dist.config import load_config
from overparam_dist.rundir import atomic_write
from overparam_dist.train import run_trial

TINY = ["model.width=16", "data.n=8", "train.stop_at_fit=false", "metrics.every=2", "wandb.mode=disabled",
        "run.quiet=true"]


def _user_files(root):
    """{path: bytes} of everything under root (the user's files, to compare before and after)."""
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_link_where_the_project_writes_is_refused_and_the_target_is_untouched(tmp_path):
    trial, user = tmp_path / "t", tmp_path / "ud"
    run_trial(load_config(None, [f"run.dir={trial}", "train.steps=4", *TINY]))
    user.mkdir()
    (user / "index.html").write_text("the user's page")
    before = _user_files(user)
    (trial / "report").symlink_to(user)  # t/report -> ../ud
    res = run_cli("report", str(trial))
    assert res.returncode == 2 and "symbolic link" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and _user_files(user) == before

    run = tmp_path / "r"
    run_trial(load_config(None, [f"run.dir={run}", "train.steps=2", "checkpoint.every=1", *TINY]))
    userck = tmp_path / "userck"
    (userck / "step_00000001").mkdir(parents=True)
    (userck / "step_00000001" / "notes.txt").write_text("keep me")
    before = _user_files(userck)
    os.rename(run / "checkpoints", tmp_path / "moved")
    (run / "checkpoints").symlink_to(userck)  # r/checkpoints -> ../userck, then a rerun with more steps
    res = run_cli("train", f"run.dir={run}", "train.steps=6", "checkpoint.every=1", "checkpoint.keep=1", *TINY,
                  cwd=tmp_path)
    assert res.returncode == 2 and "checkpoints" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert _user_files(userck) == before


def test_rotation_keeps_a_step_directory_that_is_not_ours(tmp_path):
    run = tmp_path / "r"
    common = [f"run.dir={run}", "checkpoint.every=1", "checkpoint.keep=1", *TINY]
    run_trial(load_config(None, ["train.steps=2", *common]))
    foreign = run / "checkpoints" / "step_00000000"  # older than ours: first in line for rotation
    foreign.mkdir()
    (foreign / "data.bin").write_bytes(b"\x00\x01 not a checkpoint")
    before = _user_files(foreign)
    assert run_trial(load_config(None, ["train.steps=6", *common]))["status"] == "completed"
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["step_00000000", "step_00000006"] and _user_files(foreign) == before  # ours rotated to 1


def test_an_atomic_write_replaces_a_link_at_its_temporary_name(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    (tmp_path / ".out.json.tmp").symlink_to(victim)
    atomic_write(tmp_path / "out.json", "{}")
    assert victim.read_text() == "untouched" and (tmp_path / "out.json").read_text() == "{}"


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_manifest_is_a_schema_and_a_bad_one_falls_back_to_the_checkpoint_before(tmp_path):
    run = tmp_path / "r"
    run_trial(load_config(None, [f"run.dir={run}", "train.steps=4", "checkpoint.every=2", *TINY]))
    newest = run / "checkpoints" / "step_00000004"
    assert checkpoint.verify(newest) is None
    good = json.loads((newest / "manifest.json").read_text())
    outside = tmp_path / "passwd"
    outside.write_text("root:x:0:0")
    cases = {
        "a string": {"files": "trainer_state.json"},
        "integers": {"files": {"trainer_state.json": 5}},
        "a list": ["trainer_state.json"],
        "only some files": {"files": {"trainer_state.json": good["files"]["trainer_state.json"]}},
        "a path outside": {"files": {**good["files"], "../../passwd": {"bytes": outside.stat().st_size,
                                                                         "sha256": _sha(outside)}}},
        "a size as text": {"files": {k: {**v, "bytes": str(v["bytes"])} for k, v in good["files"].items()}},
    }
    for what, manifest in cases.items():
        (newest / "manifest.json").write_text(json.dumps(manifest))
        assert checkpoint.verify(newest) is not None, what
    # The last case stays on disk: a rerun with more steps warns, resumes from step 2, and finishes
    res = run_cli("train", f"run.dir={run}", "train.steps=6", "checkpoint.every=2", *TINY, cwd=tmp_path)
    assert res.returncode == 0 and "step_00000004 is unusable" in res.stderr and "Traceback" not in res.stderr
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert read_summary(run)["steps"] == 6 and [r["step"] for r in rows][-3:] == [2, 4, 6]


def test_damaged_run_files_give_a_report_not_a_traceback(tmp_path):
    """Random bytes in metrics.jsonl, a list where a mapping belongs in config.yaml, summary.json or
    ntk_spectrum.json, text where numbers belong: the single-trial report draws what the rest allows."""
    from overparam_dist.analysis.trial_report import build_trial_report

    trial = tmp_path / "t"
    run_trial(load_config(None, [f"run.dir={trial}", "train.steps=4", *TINY]))
    rows = (trial / "metrics.jsonl").read_text()
    damages = {
        "rows": {"metrics.jsonl": rows.encode() + os.urandom(400) + b"\n[1, 2]\n{\"step\": \"x\"}\n"},
        "mappings": {"config.yaml": b"- a\n- b\n", "summary.json": b"[1]",
                     "ntk_spectrum.json": b"{\"init\": \"high\", \"end\": [1, \"x\"]}"},
    }
    for what, damage in damages.items():
        copy = tmp_path / f"t-{what}"
        copy.mkdir()
        for f in trial.iterdir():
            if f.is_file():
                (copy / f.name).write_bytes(damage.get(f.name, f.read_bytes()))
        report = build_trial_report(copy)
        assert (report.dir / "index.html").is_file() and any(f.name == "loss" for f in report.figures), what
    text = (tmp_path / "t-rows" / "report" / "figures.json").read_text()
    assert [s["x"] for s in json.loads(text)[0]["panels"][0]["series"]] == [[0, 2, 4]]  # the rows before the bytes


def test_a_results_file_with_text_where_numbers_belong_is_read(tmp_path):
    from overparam_dist.analysis.report import build_local_report
    from overparam_dist.analysis.results import write_results

    rows = [{"trial": f"w{w}-s{s}", "status": "completed", "seed": s, "model.width": w, "drift/weight_rel": 0.1 / w}
            for w in (64, 256) for s in (0, 1, 2)]
    rows += [{"trial": "bad1", "status": "completed", "seed": 0, "model.width": "wide", "drift/weight_rel": "high"},
             {"trial": "bad2", "status": "completed", "seed": "x", "model.width": "nan", "drift/weight_rel": 0.1}]
    write_results(tmp_path, rows)
    report = build_local_report(tmp_path)
    assert report.results.widths == [64, 256] and (report.dir / "index.html").is_file()
