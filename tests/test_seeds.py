"""Batched seeds (overparam_dist/seeds.py, the sweep key batch_seeds): the seeds of one cell trained in one process as
one vmapped model give each seed the run it gets alone, row for row, theory metrics included: 1e-6 in float32 and
1e-12 in float64. Seeds that fit or diverge stop on their own while the others go on; a preempted batch resumes,
also when its seeds were checkpointed at different steps; a sweep groups the seeds of a cell where that is exact."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import read_rows, read_summary, run_cli

from overparam_dist.config import load_config
from overparam_dist.seed_cells import batch_reason
from overparam_dist.train import run_seeds, run_trial

SMALL = ["model.width=64", "model.depth=2", "data.n=32", "data.target=regression", "train.steps=24",
         "train.stop_at_fit=false", "metrics.every=4", "checkpoint.every=8", "wandb.mode=disabled", "run.quiet=true"]


def _cfgs(root: Path, tag: str, args: list[str], seeds=(0, 1, 2)):
    return [load_config(None, [*args, f"seed={s}", f"run.dir={root / f'{tag}{s}'}"]) for s in seeds]


def _close(a, b, rel: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-3)
    return a == b


def assert_same_runs(alone: Path, batched: Path, rel: float) -> None:
    """Every logged row (its steps and every metric but time/*) and the summary of two runs of one seed agree."""
    ra, rb = read_rows(alone), read_rows(batched)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        keys = {k for k in x if not k.startswith("time/")}
        assert keys == {k for k in y if not k.startswith("time/")}, x["step"]
        bad = {k: (x[k], y[k]) for k in keys if not _close(x[k], y[k], rel)}
        assert not bad, (x["step"], bad)
    sa, sb = read_summary(alone), read_summary(batched)
    bad = {k: (sa[k], sb.get(k)) for k in sa if k not in ("wall_s", "name") and not _close(sa[k], sb.get(k), rel)}
    assert not bad, bad


@pytest.mark.parametrize("dtype, rel, extra", [
    ("float32", 1e-6, []),
    ("float64", 1e-12, []),
    ("float64", 1e-12, ["train.batch_size=8", "metrics.hessian=true"]),  # each seed's own mini-batch order
])
def test_batched_seeds_equal_each_seed_alone(tmp_path, dtype, rel, extra):
    args = [*SMALL, f"train.dtype={dtype}", *extra]
    summaries = run_seeds(_cfgs(tmp_path, "b", args))
    for cfg in _cfgs(tmp_path, "a", args):
        run_trial(cfg)
    assert [s["status"] for s in summaries] == ["completed"] * 3
    rows = read_rows(tmp_path / "b0")
    assert "ntk/rel_drift" in rows[-1] and "drift/weight_spec/hidden.0" in rows[-1]  # the theory metrics are compared
    for s in range(3):
        assert_same_runs(tmp_path / f"a{s}", tmp_path / f"b{s}", rel)
    # The seeds really are different runs (a batch that trained one seed three times would pass the above for s = 0)
    assert len({read_summary(tmp_path / f"b{s}")["train/loss"] for s in range(3)}) == 3


@pytest.mark.parametrize("case, args", [
    # 100% train accuracy stops each seed at its own step
    ("fit", ["data.n=16", "data.target=labels", "train.steps=300", "train.stop_at_fit=true", "metrics.every=10"]),
    # past the stability edge one seed of four diverges at step 4 and the three others go on
    ("diverge", ["model.param=ntk", "model.depth=1", "data.n=16", "train.lr=256", "train.steps=60",
                 "metrics.every=10", "metrics.ntk=false", "metrics.spectral=false"]),
])
def test_each_seed_stops_on_its_own(tmp_path, case, args):
    args = ["model.width=64", "data.target=regression", "wandb.mode=disabled", "run.quiet=true", *args]
    seeds = (0, 1, 2, 3)
    batched = run_seeds(_cfgs(tmp_path, "b", args, seeds))
    alone = [run_trial(cfg) for cfg in _cfgs(tmp_path, "a", args, seeds)]
    assert [(s["status"], s["steps"]) for s in batched] == [(s["status"], s["steps"]) for s in alone]
    if case == "fit":
        assert len({s["steps"] for s in alone}) > 1 and all(s["conv/steps_to_fit"] == s["steps"] for s in alone)
    else:
        assert sorted(s["status"] for s in alone) == ["completed"] * 3 + ["diverged"]
    for s in seeds:
        assert_same_runs(tmp_path / f"a{s}", tmp_path / f"b{s}", 1e-6)


def test_preempted_batch_resumes_exactly_with_seeds_at_different_steps(tmp_path):
    args = [*SMALL, "train.dtype=float64", "checkpoint.every=4", f"run.preempt_file={tmp_path / 'preempt'}"]
    flag = tmp_path / "preempt"

    def at(step: int):
        return lambda row: flag.touch() if row["step"] >= step else None

    # The whole batch stops at the first update after the flag (step 9: checkpointed there) ...
    first = run_seeds(_cfgs(tmp_path, "b", args), [at(8), None, None])
    assert [(s["status"], s["steps"]) for s in first] == [("preempted", 9)] * 3
    flag.unlink()
    # ... then seed 1 alone goes on to step 13, so the batch resumes its seeds from steps 9, 13 and 9.
    assert run_trial(_cfgs(tmp_path, "b", args, (1,))[0], on_log=at(12))["steps"] == 13
    flag.unlink()
    resumed = run_seeds(_cfgs(tmp_path, "b", args))
    assert [(s["status"], s["steps"]) for s in resumed] == [("completed", 24)] * 3
    for cfg in _cfgs(tmp_path, "a", args):
        run_trial(cfg)
    for s in range(3):
        assert_same_runs(tmp_path / f"a{s}", tmp_path / f"b{s}", 1e-12)
    # A finished batch is not trained again: its summaries come back as they are
    assert [s["wall_s"] for s in run_seeds(_cfgs(tmp_path, "b", args))] == [s["wall_s"] for s in resumed]


def test_what_batches_and_what_does_not(tmp_path):
    cfgs = _cfgs(tmp_path, "b", SMALL)
    assert batch_reason(cfgs) is None
    assert "differ" in batch_reason([*cfgs[:2], load_config(None, [*SMALL, "seed=5", "model.width=32"])])
    assert "same seed" in batch_reason([cfgs[0], load_config(None, [*SMALL, "seed=0", "run.dir=x"])])
    assert "parallel" in batch_reason(_cfgs(tmp_path, "d", [*SMALL, "parallel.dp=2"]))
    assert "compile" in batch_reason(_cfgs(tmp_path, "c", [*SMALL, "train.compile=true"]))
    with pytest.raises(ValueError, match="cannot be batched"):
        run_seeds(_cfgs(tmp_path, "d", [*SMALL, "parallel.dp=2"]))


def test_a_sweep_groups_the_seeds_of_each_cell(tmp_path):
    from launcher.sweep.plans import make_plan
    from launcher.sweep.spec import load_sweep

    axes = ["grid.model.width=[8,16]", "grid.seed=[0,1,2]", "train.steps=5"]
    plan = make_plan(load_sweep(None, ["name=g", *axes], runs_dir=tmp_path), {})
    assert [(t.name, [m.name for m in t.members]) for t in plan.todo] == [
        ("w8-s0+2seeds", ["w8-s0", "w8-s1", "w8-s2"]), ("w16-s0+2seeds", ["w16-s0", "w16-s1", "w16-s2"])]
    # finished seeds are not run again: the group holds the others
    plan = make_plan(load_sweep(None, ["name=g", *axes], runs_dir=tmp_path), {"w8-s1": {}})
    assert [[m.name for m in t.members] for t in plan.todo] == [["w8-s0", "w8-s2"], ["w16-s0", "w16-s1", "w16-s2"]]
    off = make_plan(load_sweep(None, ["name=g", *axes, "batch_seeds=false"], runs_dir=tmp_path), {})
    assert [t.name for t in off.todo] == ["w8-s0", "w8-s1", "w8-s2", "w16-s0", "w16-s1", "w16-s2"]
    dp = make_plan(load_sweep(None, ["name=g", *axes, "parallel.dp=2"], runs_dir=tmp_path), {})
    assert all(not t.members for t in dp.todo) and len(dp.todo) == 6  # auto: not where it is not exact
    res = run_cli("sweep", "--dry-run", "model.width=8", "seed=0,1", "parallel.dp=2", "batch_seeds=true")
    assert res.returncode == 2 and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert "batch_seeds: true, but the seeds of s0 cannot be batched: parallel.dp" in res.stderr, res.stderr
    res = run_cli("sweep", "--dry-run", "model.width=8,16", "seed=0,1,2", "train.steps=5")
    assert res.returncode == 0 and "6 of them as 2 batch(es) of seeds" in res.stdout, res.stdout


@pytest.mark.slow
def test_each_batched_seed_has_its_own_wandb_run(tmp_path, monkeypatch):
    from wandb_files import history, offline_runs, records, wandb_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    args = [a for a in SMALL if not a.startswith("wandb.")] + ["wandb.mode=offline"]
    run_seeds(_cfgs(tmp_path, "b", args))
    ids = set()
    for s in range(3):
        (run,) = offline_runs(tmp_path / f"b{s}")
        hist = history(records(wandb_file(run)))
        rows = read_rows(tmp_path / f"b{s}")
        assert sorted(hist) == [r["step"] for r in rows]
        for r in rows:
            got = {k: v for k, v in hist[r["step"]].items() if not k.startswith("_")}
            want = {k: v for k, v in r.items() if k != "step" and v is not None}
            assert got.keys() == want.keys(), (s, r["step"])
            for k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-12, abs=0), (s, r["step"], k)
        ids.add(run.name)
    assert len(ids) == 3
