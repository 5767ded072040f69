"""End-to-end trials: real processes, real gloo groups, real checkpoints."""

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, kill_after_checkpoint, read_rows, read_summary, run_cli

from launcher.local import spawn_local
from overparam_dist.config import load_config
from overparam_dist.train import run_trial

QUICK = ["wandb.mode=disabled", "--quiet"]


def _args(run_dir: Path, *extra: str) -> list[str]:
    return ["train", "--quiet", f"run.dir={run_dir}", *extra]


def test_defaults_fit_their_regression_targets_lazily(tmp_path):
    """No arguments at all: synthetic data with data.target=auto, so regression targets (issue 24, item 5)."""
    res = run_cli("train", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    (run,) = list((tmp_path / "runs").iterdir())
    summary = read_summary(run)
    cfg = load_config()
    assert cfg.data.target == "regression" and "train/acc" not in summary
    assert summary["status"] == "completed" and summary["steps"] == cfg.train.steps
    assert summary["seed"] == 0 and summary["delta"] > 0
    rows = read_rows(run)
    assert rows[0]["step"] == 0 and rows[-1]["step"] == summary["steps"]
    assert rows[-1]["train/loss"] < 0.02 * rows[0]["train/loss"]  # fitted: the loss falls 50-fold and more
    assert summary["regime"] == "lazy" and "regime: lazy: edge ratio at init" in res.stdout
    assert str(run) in res.stdout or run.name in res.stdout


def test_on_log_gets_every_logged_row_as_written(tmp_path):
    got = []
    cfg = load_config(None, [f"run.dir={tmp_path / 'r'}", "train.steps=6", "metrics.every=2", "model.width=32",
                             "data.n=16", "wandb.mode=disabled", "run.quiet=true"])
    summary = run_trial(cfg, on_log=got.append)
    rows = read_rows(tmp_path / "r")
    assert [r["step"] for r in got] == [r["step"] for r in rows] == [0, 2, 4, 6]
    assert got == rows  # the same keys and values as metrics.jsonl
    assert summary["train/loss"] == rows[-1]["train/loss"]

    def broken(row):
        raise RuntimeError("sink down")

    with pytest.warns(UserWarning, match="on_log callback failed"):  # one warning, and training goes on
        summary = run_trial(load_config(None, [f"run.dir={tmp_path / 'b'}", "train.steps=4", "model.width=32",
                                               "data.n=16", "wandb.mode=disabled", "run.quiet=true"]), on_log=broken)
    assert summary["status"] == "completed" and summary["steps"] == 4


@pytest.mark.slow
def test_paper_default_lr_is_stable_at_every_width(tmp_path):
    for width, steps in [(64, 30), (256, 30), (1024, 20), (4096, 5), (8192, 3)]:
        cfg = load_config(None, [f"model.width={width}", f"train.steps={steps}", "train.stop_at_fit=false",
                                 "metrics.every=1", "metrics.ntk=false", "metrics.spectral=false",
                                 "checkpoint.every=0", f"run.dir={tmp_path / str(width)}",
                                 "wandb.mode=disabled", "run.quiet=true"])
        summary = run_trial(cfg)
        losses = [r["train/loss"] for r in read_rows(tmp_path / str(width))]
        assert summary["status"] == "completed", width
        assert losses[-1] < 0.9 * losses[0], (width, losses)
        assert all(b <= a * 1.05 for a, b in zip(losses, losses[1:])), (width, losses)  # no blow-up on the way


def test_divergence_is_a_result_not_a_crash(tmp_path):
    res = run_cli(*_args(tmp_path / "d", "train.lr=1e7", "data.target=regression", "train.steps=50"))
    assert res.returncode == 0, res.stderr
    s = read_summary(tmp_path / "d")
    assert s["status"] == "diverged" and s["steps"] < 50 and s["train/loss"] is None


@pytest.mark.parametrize("args", [
    ["model.widht=5"], ["model.width=abc"], ["model.width=0"], ["parallel.dp=3", "data.n=2"],
    ["data.name=mnist", "data.root=/nonexistent-data-root"], ["--config", "/nonexistent.yaml"],
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, args):
    run_dir = tmp_path / "run"
    res = run_cli("train", f"run.dir={run_dir}", *args) if args[0] != "--config" else \
        run_cli("train", *args, f"run.dir={run_dir}")
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("overparam: error:")
    key = args[0].split("=")[0]
    if key.startswith(("model.", "parallel.")):
        assert key.split(".")[0] in lines[0]
    assert not run_dir.exists()


def test_foreign_run_directory_is_never_overwritten(tmp_path):
    run_dir = tmp_path / "r"
    assert run_cli(*_args(run_dir, "train.steps=3")).returncode == 0
    before = (run_dir / "metrics.jsonl").read_bytes()
    res = run_cli(*_args(run_dir, "train.steps=3", "model.width=64"))
    assert res.returncode == 2 and "model.width" in res.stderr
    assert (run_dir / "metrics.jsonl").read_bytes() == before


def _losses(run_dir: Path) -> list[float]:
    return [r["train/loss"] for r in read_rows(run_dir)]


@pytest.mark.slow
def test_ddp_matches_single_process(tmp_path):
    common = ["data.target=regression", "train.steps=20", "metrics.every=1", "model.width=256"]
    assert run_cli(*_args(tmp_path / "dp1", *common)).returncode == 0
    res = run_cli(*_args(tmp_path / "dp2", *common, "parallel.dp=2"))
    assert res.returncode == 0, res.stderr
    a, b = _losses(tmp_path / "dp1"), _losses(tmp_path / "dp2")
    assert len(a) == len(b) == 21
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5
    assert read_summary(tmp_path / "dp2")["dp"] == 2


@pytest.mark.slow
def test_every_sample_counts_when_dp_does_not_divide_n(tmp_path):
    """n = 9 at dp = 2 under mini-batch SGD: evaluation covers all 9 samples, so the logged loss equals dp = 1
    and full train accuracy (hence stop_at_fit) is reachable."""
    common = ["data.n=9", "data.target=labels", "train.batch_size=4", "metrics.every=1", "model.width=128",
              "train.steps=300", "train.dtype=float64"]
    assert run_cli(*_args(tmp_path / "dp1", *common)).returncode == 0
    res = run_cli(*_args(tmp_path / "dp2", *common, "parallel.dp=2"))
    assert res.returncode == 0, res.stderr
    a, b = read_rows(tmp_path / "dp1"), read_rows(tmp_path / "dp2")
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert abs(x["train/loss"] - y["train/loss"]) <= 1e-6 * abs(x["train/loss"]), (x["step"], x, y)
        assert x["train/acc"] == y["train/acc"]
    s1, s2 = read_summary(tmp_path / "dp1"), read_summary(tmp_path / "dp2")
    assert s2["train/acc"] == 1.0 and s2["steps"] == s1["steps"] < 300  # stop_at_fit fired at the same step


def _init_hash_worker() -> str:
    from overparam_dist.models import build_model
    from overparam_dist.parallel import distributed

    cfg = load_config(None, ["parallel.dp=2", "model.width=300", "seed=11"])
    world = distributed.setup(cfg)
    model, _ = build_model(cfg, (16,), 2)
    h = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    world.close()
    return h


@pytest.mark.slow  # two processes
def test_initial_weights_bit_identical_across_process_counts():
    from overparam_dist.models import build_model

    model, _ = build_model(load_config(None, ["model.width=300", "seed=11"]), (16,), 2)
    single = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()
    hashes = spawn_local(2, _init_hash_worker)
    assert hashes[0] == hashes[1] == single


@pytest.mark.slow
def test_torchrun_joins_the_process_group(tmp_path):
    common = ["data.target=regression", "train.steps=10", "metrics.every=1", "model.width=128"]
    assert run_cli(*_args(tmp_path / "one", *common)).returncode == 0
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "launcher", *_args(tmp_path / "tr", *common, "parallel.dp=2")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "tr")
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5 and len(a) == len(b)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from overparam_dist import checkpoint
    from overparam_dist.models import build_model
    from overparam_dist.parallel import distributed

    cfg = load_config(run_dir / "config.yaml")
    model, _ = build_model(cfg, (cfg.data.dim,), cfg.data.classes)
    latest = checkpoint.latest(run_dir / "checkpoints", distributed.setup(cfg))
    state = checkpoint.load(latest, dict(model.named_parameters()))
    assert state["step"] == cfg.train.steps
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("batch", [0, 16])
def test_sigkill_then_rerun_equals_uninterrupted(tmp_path, batch):
    common = ["data.target=regression", "train.steps=100", "metrics.every=5", "checkpoint.every=20",
              "model.width=512", "model.depth=3", f"train.batch_size={batch}", "wandb.mode=disabled"]
    ref = tmp_path / "ref"
    assert run_cli(*_args(ref, *common)).returncode == 0
    run = tmp_path / "killed"
    kill_after_checkpoint([sys.executable, "-m", "launcher", *_args(run, *common)], run, 40)
    assert not (run / "summary.json").exists()
    res = run_cli(*_args(run, *common))
    assert res.returncode == 0, res.stderr
    steps = [r["step"] for r in read_rows(run)]
    assert steps == list(range(0, 101, 5))  # each logged step exactly once
    # Every metric, theory metrics included (K_0, ReLU patterns and spectral warm starts survive the kill).
    for got, want in zip(read_rows(run), read_rows(ref)):
        assert {k for k in got if not k.startswith("time/")} == {k for k in want if not k.startswith("time/")}
        for k in want:
            if not k.startswith("time/"):
                assert got[k] == pytest.approx(want[k], rel=1e-6, abs=1e-12), (got["step"], k)
    a, b = _final_weights(ref), _final_weights(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert read_summary(run)["train/loss"] == read_summary(ref)["train/loss"]
    # A rerun of a finished trial is a no-op that returns the same summary.
    before = (run / "metrics.jsonl").read_bytes()
    assert run_cli(*_args(run, *common)).returncode == 0
    assert (run / "metrics.jsonl").read_bytes() == before


@pytest.mark.slow
def test_sigusr1_checkpoints_at_once_and_resumes_exactly(tmp_path):
    common = ["data.target=regression", "train.steps=150", "metrics.every=5", "checkpoint.every=1000",
              "model.width=512", "model.depth=3", "metrics.ntk=false"]
    ref, run = tmp_path / "ref", tmp_path / "pre"
    assert run_cli(*_args(ref, *common)).returncode == 0
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *_args(run, *common)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() or len(read_rows(run)) < 4:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = read_summary(run)
    assert summary["status"] == "preempted" and 15 <= summary["steps"] < 150 and "preempted" in out
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert saved == [f"step_{summary['steps']:08d}"]  # checkpointed at once, not at checkpoint.every
    assert run_cli(*_args(run, *common)).returncode == 0
    assert [r["step"] for r in read_rows(run)] == list(range(0, 151, 5))
    assert _losses(run) == pytest.approx(_losses(ref), rel=1e-6)
    assert read_summary(run)["status"] == "completed"


def test_a_trial_needs_only_torch_and_omegaconf(tmp_path):
    """ray, wandb, matplotlib, scikit-learn and tqdm are imported lazily, only where they are used."""
    code = f"""
import builtins, sys
blocked = ("ray", "wandb", "matplotlib", "sklearn", "tqdm", "wandb_workspaces")
real = builtins.__import__
def guarded(name, *a, **k):
    if name.split(".")[0] in blocked:
        raise ImportError("blocked " + name)
    return real(name, *a, **k)
builtins.__import__ = guarded
import overparam_dist
from overparam_dist.config import load_config
from overparam_dist.train import run_trial
s = run_trial(load_config(None, ["run.dir={tmp_path / 'r'}", "run.quiet=true", "wandb.mode=disabled",
                                 "train.steps=5"]))
assert s["status"] == "completed" and s["steps"] == 5
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_target_ratio_is_the_fit_and_survives_a_resume(tmp_path):
    """train.target_ratio=0.05 stops at the first step whose loss is at most 5% of the loss at step 0, and that step
    is conv/steps_to_fit even with label targets (a loss target replaces 100% accuracy). Split into two runs of the
    same directory (a rerun with more steps resumes), the resumed half still measures against the loss at step 0."""
    common = ["model.width=64", "model.depth=1", "data.n=16", "metrics.every=1", "metrics.ntk=false",
              "metrics.spectral=false", "wandb.mode=disabled", "run.quiet=true", "checkpoint.every=1",
              "data.target=labels"]
    whole = load_config(None, [f"run.dir={tmp_path / 'a'}", "train.steps=400", "train.target_ratio=0.05", *common])
    run_trial(whole)
    rows, summary = read_rows(tmp_path / "a"), read_summary(tmp_path / "a")
    losses = [r["train/loss"] for r in rows]
    first = next(r["step"] for r in rows if r["train/loss"] <= 0.05 * losses[0])
    assert summary["conv/steps_to_fit"] == first == summary["steps"] == rows[-1]["step"]
    assert next(r["step"] for r in rows if r["train/acc"] >= 1.0) < first  # accuracy alone would have stopped earlier
    cut = first // 2
    run_trial(load_config(None, [f"run.dir={tmp_path / 'b'}", f"train.steps={cut}", "train.target_ratio=0.05",
                                 *common]))
    run_trial(load_config(None, [f"run.dir={tmp_path / 'b'}", "train.steps=400", "train.target_ratio=0.05", *common]))
    assert read_summary(tmp_path / "b")["conv/steps_to_fit"] == first


def test_a_kill_after_the_final_checkpoint_changes_no_summary_value(tmp_path):
    """Killed after its final checkpoint but before summary.json (closing the W&B run lies between them), a trial is
    rerun from that checkpoint and measures its last step again. Its summary must not count that step twice: the
    rate fitted over the loss window and the edge-of-stability share over the sharpness rows both did."""
    args = ["data.n=8", "data.target=regression", "train.steps=40", "train.stop_at_fit=false", "metrics.every=10",
            "checkpoint.every=10", "wandb.mode=disabled", "metrics.spectral=false", "model.width=16",
            "metrics.hessian=true", "run.quiet=true", f"run.dir={tmp_path}"]
    want = run_trial(load_config(None, args))
    (tmp_path / "summary.json").unlink()  # what the kill leaves: every row, the step-40 checkpoint, no summary
    got = run_trial(load_config(None, args))
    assert want["regime/eos_share"] is None and want["conv/rate"] < 0
    for k, v in want.items():
        if k != "wall_s" and not k.startswith("time/"):
            assert got[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v), k
