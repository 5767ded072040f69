"""W&B logging of one trial: the offline file holds the metrics, config and summary and never the API key; a killed
and retried trial continues the same offline run; a W&B failure is one warning and training completes; the mode's
resolution; wandb-osh; the history reader against wandb's own over several blocks."""

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, kill_after_checkpoint, read_rows, read_summary
from wandb_files import (
    FAKE_KEY,
    TINY,
    cli,
    files_containing,
    final_summary,
    flush_wandb,
    history,
    no_login_env,
    offline_runs,
    records,
    run_record,
    sub_env,
    wandb_file,
)

from overparam_dist.config import load_config, to_dict
from overparam_dist.sinks import WandbWarning, wandb_history_steps, wandb_mode
from overparam_dist.train import run_trial


@pytest.mark.slow
def test_offline_trial_file_holds_metrics_config_summary_and_no_api_key(tmp_path):
    run_dir = tmp_path / "runs" / "g" / "t1"
    env = sub_env(WANDB_MODE="offline", WANDB_API_KEY=FAKE_KEY)
    res = subprocess.run([sys.executable, "-m", "launcher", "train", "--quiet", f"run.dir={run_dir}", "wandb.group=g",
                          "run.name=t1", "model.width=32", *[a for a in TINY if a != "run.quiet=true"]],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (run,) = offline_runs(run_dir)
    recs = records(wandb_file(run))
    meta = run_record(recs)
    assert meta["run_group"] == "g" and meta["job_type"] == "trial"
    assert meta["run_id"] == (run_dir / "wandb_id").read_text().strip()
    # Named <sweep>/<trial>, tagged to sort and filter by sweep, architecture, parameterization, depth, width
    assert meta["display_name"] == "g/t1", meta
    assert meta["tags"] == ["sweep:g", "arch:fc", "param:paper", "depth:2", "width:32"], meta
    config = dict(meta["config"]["update"])
    config.pop("_wandb", None)
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    # The resolved config (+ derived), except that train.lr is the step size used, not "auto"
    assert written["train"]["lr"] == "auto" and config["train"]["lr_rule"] == "auto"
    assert config["train"]["lr"] == written["derived"]["lr"]["lr"] > 0
    config["train"] = {k: v for k, v in config["train"].items() if k != "lr_rule"} | {"lr": "auto"}
    assert config == written
    assert config["derived"]["lr"]["rule"] == "auto" and config["derived"]["lr"]["kernel"] == "max"
    assert config["derived"]["lr"]["lambda_max_init"] > 0  # the step's kernel reaches W&B too

    hist = history(recs)
    rows = read_rows(run_dir)
    assert sorted(hist) == [r["step"] for r in rows] == list(range(0, 21, 5))
    for r in rows:
        got = {k: v for k, v in hist[r["step"]].items() if not k.startswith("_")}
        want = {k: v for k, v in r.items() if k != "step" and v is not None}
        assert got.keys() == want.keys(), r["step"]
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12, abs=0), (r["step"], k)

    summary = final_summary(recs)
    facts = summary.pop("run")  # the trial's facts apart from its metrics
    for k, v in read_summary(run_dir).items():
        if v is not None:
            got = summary[k] if "/" in k else facts[k]
            assert got == (pytest.approx(v, rel=1e-12) if isinstance(v, float) else v), k
    assert all("/" in k for k in summary if not k.startswith("_")), summary.keys()  # only metrics at the top
    assert facts["status"] == "completed" and facts["dp"] == 1 and facts["tp"] == 1 and facts["wall_s"] > 0
    assert files_containing(tmp_path, FAKE_KEY.encode()) == []


@pytest.mark.slow
def test_killed_and_retried_trial_continues_the_same_offline_run(tmp_path):
    run_dir = tmp_path / "retry"
    args = [sys.executable, "-m", "launcher", "train", "--quiet", f"run.dir={run_dir}", "data.target=regression",
            "train.steps=100", "metrics.every=5", "checkpoint.every=20", "model.width=256", "model.depth=2"]
    env = sub_env(WANDB_MODE="offline")
    kill_after_checkpoint(args, run_dir, 40, env=env)
    assert not (run_dir / "summary.json").exists()
    res = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr

    first, second = offline_runs(run_dir)  # one offline piece per process, both of the trial's one run id
    run_id = (run_dir / "wandb_id").read_text().strip()
    assert first.name.endswith("-" + run_id) and second.name.endswith("-" + run_id)
    recs1, recs2 = records(wandb_file(first)), records(wandb_file(second))
    assert run_record(recs2)["run_id"] == run_id and run_record(recs2)["resume"]
    if any(r["type"] == "run" for r in recs1):  # a killed process may have written no records, or no file
        assert run_record(recs1)["run_id"] == run_id
    steps1, steps2 = sorted(history(recs1)), sorted(history(recs2))
    assert steps1 == list(range(0, 5 * len(steps1), 5))
    # The second process resumed at the checkpoint (step 40). Rows the killed process's W&B service never wrote
    # (it dies with it) are logged again from metrics.jsonl, so the two pieces hold every step exactly once.
    assert steps2[0] <= 40 and sorted(steps1 + steps2) == list(range(0, 101, 5)), (steps1, steps2)
    if wandb_file(first) is not None:  # our reader of the torn file agrees with wandb's
        assert wandb_history_steps(wandb_file(first)) == steps1
    assert wandb_history_steps(wandb_file(second)) == steps2  # a complete file over more than one 32 KiB block
    jsonl = {r["step"]: r for r in read_rows(run_dir)}
    assert sorted(jsonl) == list(range(0, 101, 5))
    for step, item in {**history(recs1), **history(recs2)}.items():
        assert item["train/loss"] == pytest.approx(jsonl[step]["train/loss"], rel=1e-12)
    s2 = final_summary(recs2)
    assert s2["run"]["resumed_from_step"] == 40 and s2["run"]["status"] == "completed" and s2["run"]["steps"] == 100

    # `overparam wandb sync` uploads both pieces, oldest first; without a login it refuses in one line.
    dry = cli("wandb", "sync", str(tmp_path), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    listed = re.findall(r"(offline-run-[^/\s]+)/run-[^/\s]+\.wandb", dry.stdout + dry.stderr)
    uploadable = [d.name for d in (first, second) if (f := wandb_file(d)) is not None and f.stat().st_size > 7]
    assert listed == uploadable and second.name in listed, dry.stdout + dry.stderr  # a header-only piece is skipped
    nologin = cli("wandb", "sync", str(tmp_path), env=no_login_env(tmp_path))
    assert nologin.returncode == 2 and "not logged in" in nologin.stderr
    assert len(nologin.stderr.strip().splitlines()) == 1, nologin.stderr


def _bad_env(run_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "bogus")  # not a wandb mode: wandb.init raises


def _bad_dir(run_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir.mkdir(parents=True)
    cfg = load_config(None, [f"run.dir={run_dir}", "model.width=32", *TINY])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg)))  # the same trial, not yet run
    (run_dir / "wandb").write_text("a file where W&B wants its directory\n")


@pytest.mark.parametrize("breakage", [_bad_env, _bad_dir], ids=["invalid-mode", "bad-directory"])
def test_wandb_failure_is_one_warning_and_training_completes(tmp_path, monkeypatch, breakage):
    run_dir = tmp_path / "t"
    breakage(run_dir, monkeypatch)
    cfg = load_config(None, [f"run.dir={run_dir}", "model.width=32", *TINY])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run_trial(cfg)
    w = [c for c in caught if issubclass(c.category, WandbWarning)]
    assert len(w) == 1, [str(c.message) for c in caught]
    assert "W&B disabled for this trial" in str(w[0].message)
    assert summary["status"] == "completed"
    assert [r["step"] for r in read_rows(run_dir)] == list(range(0, 21, 5))
    assert read_summary(run_dir)["steps"] == 20


def test_wandb_mode_resolution(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert wandb_mode("offline") == "offline" and wandb_mode("online") == "online"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode("offline") == "online"  # the environment wins over the default
    assert wandb_mode("disabled") == "disabled"  # an explicit config value is kept
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("offline") == "disabled" and wandb_mode("online") == "online"


@pytest.mark.slow
def test_wandb_osh_is_triggered_when_installed(tmp_path, monkeypatch):
    import types

    calls = []

    class Hook:
        def __init__(self, communication_dir=None):
            calls.append(("init", communication_dir))

        def __call__(self, logdir=None):
            calls.append(("sync", Path(logdir)))

    mod = types.ModuleType("wandb_osh.hooks")
    mod.TriggerWandbSyncHook = Hook
    monkeypatch.setitem(sys.modules, "wandb_osh", types.ModuleType("wandb_osh"))
    monkeypatch.setitem(sys.modules, "wandb_osh.hooks", mod)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_OSH_COMMAND_DIR", str(tmp_path / "osh"))
    run_dir = tmp_path / "t"
    run_trial(load_config(None, [f"run.dir={run_dir}", "model.width=16", *TINY]))
    (run,) = offline_runs(run_dir)
    assert calls[0] == ("init", str(tmp_path / "osh"))
    syncs = [c[1] for c in calls if c[0] == "sync"]
    assert len(syncs) >= 2 and all(p.resolve() == run.resolve() for p in syncs)  # first row, then after finish


@pytest.mark.slow
def test_history_reader_agrees_with_wandb_over_several_blocks(tmp_path, monkeypatch):
    from overparam_dist.sinks import wandb_init

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = wandb_init(mode="offline", project="p", entity="", group="g", job_type="trial", name="n", run_id="reader1",
                     out_dir=tmp_path, config={})
    for step in range(0, 600, 2):
        run.log({f"m/{i}": step * 0.001 + i for i in range(12)}, step=step, commit=True)
    run.finish()
    flush_wandb()
    f = wandb_file(offline_runs(tmp_path)[0])
    assert f.stat().st_size > 3 * 32768
    assert wandb_history_steps(f) == sorted(history(records(f))) == list(range(0, 600, 2))
