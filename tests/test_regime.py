"""Issue 24, item 3: every trial's regime, measured and named by documented rules (metrics/regime.py), on trials
built to land in each: a mup trial at five times its step (every ReLU dies, the loss sits at 0.5 and the status
alone says `completed`), a diverging one, a catapult, a lazy and a rich one."""

import pytest
import torch
from conftest import read_rows, run_cli

from overparam_dist.config import load_config
from overparam_dist.metrics import names
from overparam_dist.metrics.regime import kernel_samples, output_is_constant
from overparam_dist.metrics.regime_rules import EOS_SHARE, LAZY_KERNEL_MOVE, RICH_FEATURE_MOVE, classify
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0"]


def _classify(**kw):
    base = dict(status="completed", loss0=1.0, loss_end=0.1, loss_max=1.0, edge0=0.9, kernel_move=0.05, dead=[],
                constant=False)
    return classify(**{**base, **kw})[0]


def test_the_rules_in_their_order():
    assert _classify() == "lazy"
    assert _classify(kernel_move=LAZY_KERNEL_MOVE) == "rich"
    assert _classify(edge0=2.0, loss_max=3.0) == "catapult"
    assert _classify(status="diverged") == "diverged"
    assert _classify(loss_end=float("nan")) == "diverged"
    assert _classify(loss_end=1.5) == "diverged"  # ended above its start
    assert _classify(dead=["hidden.0"], loss_end=0.5) == "dead"  # before "ended above": nothing can train
    assert _classify(constant=True) == "dead"
    assert _classify(kernel_move=None) == "lazy" and _classify(edge0=None, kernel_move=None) == "lazy"
    assert _classify(edge0=3.0, edge=4.0) == "lazy"  # cross-entropy's edge is at 4
    # The catapult seen below the predicted edge: a spike, then the kernel's edge ratio below its start and the edge
    assert _classify(edge0=1.9, loss_max=1.5, edge_end=1.2) == "catapult"
    assert _classify(edge0=1.9, loss_max=1.5, edge_end=1.95) == "lazy"  # the kernel did not fall below the edge
    assert _classify(edge0=1.9, loss_max=1.005, edge_end=1.2) == "lazy"  # a rise within SPIKE is no spike
    # The edge of stability: half the second half's sharpness rows within the band; before rich, after catapult
    assert _classify(eos=EOS_SHARE, kernel_move=0.9) == "edge_of_stability"
    assert _classify(eos=EOS_SHARE - 0.01) == "lazy" and _classify(eos=None) == "lazy"
    assert _classify(eos=1.0, edge0=2.5, loss_max=3.0) == "catapult"
    # Features that moved Theta(1) are rich, whatever the kernel did
    assert _classify(feature_move=RICH_FEATURE_MOVE) == "rich" and _classify(feature_move=0.2) == "lazy"
    assert all(r in names.REGIME_FLAGGED for r in ("catapult", "edge_of_stability", "diverged", "dead"))
    assert "rich" not in names.REGIME_FLAGGED and "lazy" not in names.REGIME_FLAGGED
    assert output_is_constant(torch.ones(5, 3)) and not output_is_constant(torch.arange(15.0).reshape(5, 3))
    assert kernel_samples(5000, 10) == 204 and kernel_samples(32, 2) == 32 and kernel_samples(10, 4096) == 1


def test_a_dead_mup_trial_says_dead(tmp_path):
    """The issue's mup command at five times its auto step, lr * lambda_max(Theta_0) / n = 1 (where the old auto put
    it): every ReLU inactive within a few steps. The status says completed; the regime says dead, and the CLI prints
    it."""
    res = run_cli("train", "model.param=mup", "model.width=512", "model.depth=1", "data.n=16", "train.steps=100",
                  "train.lr_scale=5", "data.target=labels", "metrics.every=20", "wandb.mode=disabled", "--quiet",
                  f"run.dir={tmp_path}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    summary = __import__("json").loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary[names.REGIME] == "dead", summary
    assert summary[names.REGIME_DEAD_LAYERS] == ["input", "hidden.0"]  # both ReLU layers of depth 1
    assert "regime: dead (outside the regime its metrics describe): no ReLU of input, hidden.0 is active" in res.stdout


def test_diverged_catapult_lazy_and_rich_trials(tmp_path):
    common = [*QUIET, "data.n=16", "train.steps=40", "metrics.every=10", "train.stop_at_fit=false",
              "metrics.spectral=false"]
    diverged = run_trial(load_config(None, [*common, "model.width=64", "train.lr=1e6", f"run.dir={tmp_path / 'd'}"]))
    assert diverged["status"] == "diverged" and diverged[names.REGIME] == "diverged"
    # ntk at m = 2048, half the edge: the kernel barely moves.
    lazy = run_trial(load_config(None, [*common, "model.param=ntk", "model.width=2048", "model.depth=1",
                                        f"run.dir={tmp_path / 'l'}"]))
    assert lazy[names.REGIME] == "lazy" and lazy[names.REGIME_KERNEL_MOVE] < LAZY_KERNEL_MOVE
    assert lazy[names.REGIME_EDGE_RATIO_INIT] == pytest.approx(1.0, abs=1e-9)  # Theta_0 sets auto's step here
    rows = read_rows(tmp_path / "l")
    assert rows[0][names.REGIME_EDGE_RATIO] == lazy[names.REGIME_EDGE_RATIO_INIT]
    assert rows[-1][names.REGIME_EDGE_RATIO] == lazy[names.REGIME_EDGE_RATIO]  # Theta_T at the last row
    assert names.REGIME_EDGE_RATIO not in rows[1]  # at init and at the end only
    # Past the edge at init (lr_scale 2.5 of half the edge): the linearisation diverges, the net converges.
    cat = run_trial(load_config(None, [*common, "model.param=ntk", "model.width=2048", "model.depth=1",
                                       "train.lr_scale=2.5", "train.steps=100", f"run.dir={tmp_path / 'c'}"]))
    assert cat[names.REGIME_EDGE_RATIO_INIT] == pytest.approx(2.5, abs=1e-9)
    assert cat[names.REGIME] == "catapult" and cat[names.REGIME_LOSS_RISE] > 1, cat[names.REGIME_WHY]
    # mup at its auto step: it trains, and its kernel moves by O(1): rich.
    rich = run_trial(load_config(None, [*common, "model.param=mup", "model.width=256", "model.depth=1",
                                        f"run.dir={tmp_path / 'r'}"]))
    assert rich[names.REGIME] == "rich" and rich[names.REGIME_KERNEL_MOVE] >= LAZY_KERNEL_MOVE
