"""Tensor parallelism (hand-written shards + DDP over dp) against the unsharded computation, on gloo."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, read_rows, read_summary

from launcher.local import launch_trial, spawn_local
from overparam_dist.config import load_config

ARCHS = {
    "fc": ["model.arch=fc", "model.width=128", "model.depth=3"],
    "cnn": ["model.arch=cnn", "model.width=32", "model.depth=2", "model.bias=true"],
    "resnet": ["model.arch=resnet", "model.width=128", "model.depth=3", "model.tau=0.3"],
}
# float64 so that 1e-5 compares the parallel algorithm, not float32 summation order.
COMMON = ["data.target=regression", "train.steps=20", "metrics.every=10", "train.dtype=float64",
          "metrics.ntk_probe=16", "wandb.mode=disabled", "run.quiet=true"]


@pytest.fixture(autouse=True)
def regenerate_w0(monkeypatch):
    """Sharded drift metrics regenerate each rank's block of W_0 (the path wide models take), not a copy."""
    monkeypatch.setenv("OVERPARAM_W0_CACHE_BYTES", "0")


def _run(run_dir: Path, *overrides: str) -> dict:
    return launch_trial(load_config(None, [f"run.dir={run_dir}", *COMMON, *overrides]))


def _assert_rows_equal(a: Path, b: Path, rel: float = 1e-5):
    ra, rb = read_rows(a), read_rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        assert {k for k in x if not k.startswith("time/")} == {k for k in y if not k.startswith("time/")}
        for k, v in x.items():
            if k.startswith("time/") or v is None:
                continue
            assert y[k] == pytest.approx(v, rel=rel, abs=1e-12), (x["step"], k)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_sharded_training_equals_unsharded(tmp_path, arch):
    _run(tmp_path / "ref", *ARCHS[arch])
    for dp, tp in [(1, 2), (2, 2), (1, 4)]:
        run = tmp_path / f"dp{dp}tp{tp}"
        summary = _run(run, *ARCHS[arch], f"parallel.dp={dp}", f"parallel.tp={tp}")
        assert summary["status"] == "completed" and (summary["dp"], summary["tp"]) == (dp, tp)
        _assert_rows_equal(tmp_path / "ref", run)
        keys = [k for k in read_rows(run)[-1] if k.startswith(("drift/", "ntk/"))]
        assert any(k.startswith("ntk/") for k in keys) and any(k.startswith("drift/weight_spec") for k in keys)
        # pre-activation movement (feature/*: sharded layers sum over tp), compared above: present and moving
        # (hidden.1's ReLU input is a local shard for every arch here; paper's frozen A never moves)
        assert all(read_rows(run)[-1].get(f"feature/delta_rms/{layer}", 0) > 0 for layer in ("hidden.0", "hidden.1"))
        assert read_summary(run)["trained_params"] == read_summary(tmp_path / "ref")["trained_params"]


def _local_shards(arch_overrides: list[str]) -> dict:
    """Worker: build the sharded model at init and return its local shards with their placement."""
    from overparam_dist.models import build_model
    from overparam_dist.parallel import distributed
    from overparam_dist.parallel.parallelize import Parallelism

    tp = int(os.environ["WORLD_SIZE"])
    cfg = load_config(None, [*arch_overrides, f"parallel.tp={tp}", "seed=9"])
    world = distributed.setup(cfg)
    par = Parallelism(world, cfg.model.arch, cfg.model.depth)
    model, _ = build_model(cfg, (1, 4, 4) if cfg.model.arch == "cnn" else (16,), 2, shard=par.shard)
    out = {n: (p.detach().clone(), par.shards.get(n)) for n, p in model.named_parameters()}
    world.close()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(ARCHS))
def test_initial_weights_bit_identical_across_tp(arch):
    from overparam_dist.models import build_model

    overrides = [o for o in ARCHS[arch] if "bias" not in o] + ["model.bias=true", "model.width=64"]
    ref, _ = build_model(load_config(None, [*overrides, "seed=9"]), (1, 4, 4) if arch == "cnn" else (16,), 2)
    ref = dict(ref.named_parameters())
    for tp in (2, 4):
        per_rank = spawn_local(tp, _local_shards, overrides)
        sharded_any = False
        for name, full in ref.items():
            parts = [per_rank[r][name] for r in range(tp)]
            shard = parts[0][1]
            if shard is None:
                for local, _ in parts:
                    assert torch.equal(local, full.detach()), (tp, name)
                continue
            sharded_any = True
            assert all(local.shape[shard.dim] == full.shape[shard.dim] // tp for local, _ in parts)
            assert torch.equal(torch.cat([local for local, _ in parts], dim=shard.dim), full.detach()), (tp, name)
        assert sharded_any


@pytest.mark.slow
def test_resharding_resume_equals_uninterrupted(tmp_path):
    arch = ARCHS["fc"]
    _run(tmp_path / "ref", *arch)  # uninterrupted, tp=1, 20 steps
    for first, second in [(2, 1), (1, 2)]:
        run = tmp_path / f"tp{first}to{second}"
        _run(run, *arch, f"parallel.tp={first}", "train.steps=10")
        assert read_summary(run)["steps"] == 10
        summary = _run(run, *arch, f"parallel.tp={second}")  # resumes from the tp=first checkpoint at step 10
        assert summary["steps"] == 20 and summary["tp"] == second
        _assert_rows_equal(tmp_path / "ref", run)


def test_bad_mesh_is_one_line_before_any_process(tmp_path):
    def cli(*args, env=None):
        return subprocess.run([sys.executable, "-m", "launcher", "train", f"run.dir={tmp_path / 'r'}", *args],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)

    res = cli("parallel.tp=3")  # does not divide the default width
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "parallel.tp" in res.stderr
    # tp=3 on a launcher with 2 processes (rank 0 of a 2-process world, as torchrun or srun would set it).
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    res = cli("parallel.tp=3", "model.width=384", env=env)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "parallel.tp" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()
