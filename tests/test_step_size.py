"""Issue 12, item 1: `train.lr: auto` puts the step at lr_scale * n / lambda_max(K) of the kernel gradient
descent sees (step_size.py), which keeps default trials in the kernel regime at every depth."""

import math

import pytest
import torch
import yaml
from conftest import read_rows, read_summary

from overparam_dist.config import ConfigError, load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics import names
from overparam_dist.metrics.fit import loglog_slope
from overparam_dist.metrics.ntk import empirical_ntk
from overparam_dist.models import build_model
from overparam_dist.step_size import resolve_lr
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0"]


def _model(cfg):
    ds = build_dataset(cfg)
    model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    return ds, model, rules


def _gd_operator_lambda_max(model, rules, x) -> float:
    """lambda_max of Theta = sum_p s_p J_p J_p^T over all nC outputs: the full kernel, no 1/C reduction."""
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    theta = 0
    for name, p in trained:
        for _, q in trained:
            q.requires_grad_(q is p)
        theta = theta + rules[name].lr_scale * empirical_ntk(model, x, outputs="full")
    for _, q in trained:
        q.requires_grad_(True)
    return float(torch.linalg.eigvalsh(theta)[-1])


@pytest.mark.parametrize("over", [
    ["model.param=paper", "model.depth=2"],                        # K_inf known: the larger of K_inf and Theta_0
    ["model.param=ntk", "model.depth=2", "model.bias=true"],       # K_inf known, biases
    ["model.param=ntk", "model.depth=1", "data.classes=10"],       # C > 1: cross-output blocks of Theta_0 count
    ["model.param=mup", "model.depth=2"],                          # empirical kernel, per-layer rates, a fifth
    ["model.arch=resnet", "model.param=ntk", "model.depth=2"],     # empirical kernel
])
@pytest.mark.parametrize("width", [32, 128, 2048])
def test_auto_step_keeps_every_trial_inside_half_the_edge(over, width):
    """Issue 24, item 4: lr * lambda_max(Theta_0) / n <= lr_scale for every trial auto sets, Theta_0 the full
    step-weighted nC x nC kernel at init (here on all n samples, computed independently, parameter by parameter)."""
    cfg = load_config(None, [f"model.width={width}", "data.n=32", "data.target=regression", *over])
    ds, model, rules = _model(cfg)
    lr, facts, _ = resolve_lr(cfg, model, rules, ds.x.double(), ds.num_outputs)
    edge = lr * _gd_operator_lambda_max(model, rules, ds.x.double()) / ds.x.shape[0]
    assert facts["rule"] == "auto" and facts["lr"] == lr and facts["samples"] == 32
    assert facts["edge_ratio"] == pytest.approx(edge, rel=1e-9)  # recorded as measured here
    want = 0.2 if "model.param=mup" in over else 1.0
    if facts["set_by"] == "empirical at init":
        assert edge == pytest.approx(want, rel=1e-9), edge
    else:  # K_inf set the step: it is the larger, so the step is smaller still
        assert "lambda_max_inf" in facts and edge <= want + 1e-12, edge
        assert lr == pytest.approx(32 / facts["lambda_max_inf"], rel=1e-9)
    # lr_kernel=infinite: K_inf alone, the same step at every width (where it is known), past half the edge or not.
    if "model.arch=resnet" not in over and "model.param=mup" not in over:
        inf = load_config(None, [f"model.width={width}", "data.n=32", "data.target=regression", *over,
                                 "train.lr_kernel=infinite"])
        lr_inf, facts_inf, _ = resolve_lr(inf, model, rules, ds.x.double(), ds.num_outputs)
        assert lr_inf == pytest.approx(32 / facts["lambda_max_inf"], rel=1e-12) and lr_inf >= lr


@pytest.mark.slow
@pytest.mark.parametrize("width", [128, 512, 2048])
@pytest.mark.parametrize("depth", [1, 2])
def test_mup_trains_under_auto(tmp_path, width, depth):
    """Issue 24, item 4: at the full kernel step every ReLU of mup died within 10 steps; now the loss falls below
    half its initial value within 100 steps, with no dead layer, and the summary's regime says so."""
    cfg = load_config(None, [*QUIET, "model.param=mup", f"model.width={width}", f"model.depth={depth}", "data.n=16",
                             "train.steps=100", "train.stop_at_fit=false", "metrics.every=10", "metrics.ntk=false",
                             "metrics.spectral=false", f"run.dir={tmp_path}"])
    s = run_trial(cfg)
    loss = [r[names.TRAIN_LOSS] for r in read_rows(tmp_path)]
    assert s["status"] == "completed" and loss[-1] < loss[0] / 2, loss
    assert s[names.REGIME_DEAD_LAYERS] == [] and s[names.REGIME] in ("lazy", "rich"), s[names.REGIME_WHY]


def test_a_given_lr_is_used_and_auto_is_recorded(tmp_path):
    given = load_config(None, [*QUIET, "model.width=64", "train.lr=8", f"run.dir={tmp_path / 'g'}",
                               "train.steps=3"])
    run_trial(given)
    derived = yaml.safe_load((tmp_path / "g" / "config.yaml").read_text())["derived"]
    assert derived["lr"]["rule"] == "given" and derived["lr"]["lr"] == 8.0 and derived["lr"]["edge_ratio"] > 0
    assert derived["effective_lr"]["hidden.0.weight"] == 8.0 / 64  # paper: lr / m, as before

    auto = load_config(None, [*QUIET, "model.width=64", f"run.dir={tmp_path / 'a'}", "train.steps=3",
                              "train.lr_scale=0.5"])
    run_trial(auto)
    derived = yaml.safe_load((tmp_path / "a" / "config.yaml").read_text())["derived"]
    ds = build_dataset(auto)
    from overparam_dist.metrics.analytic import infinite_width_ntk

    lam = float(torch.linalg.eigvalsh(infinite_width_ntk(ds.x, 2, "paper") / ds.num_outputs)[-1])
    assert math.isclose(derived["lr"]["lambda_max_inf"], lam, rel_tol=1e-9)
    lam_step = max(lam, derived["lr"]["lambda_max_init"])
    assert math.isclose(derived["lr"]["lr"], 0.5 * 64 / lam_step, rel_tol=1e-9)
    assert math.isclose(derived["effective_lr"]["hidden.0.weight"], derived["lr"]["lr"] / 64, rel_tol=1e-12)
    rows = read_rows(tmp_path / "a")
    assert rows[0][names.REGIME_EDGE_RATIO] == pytest.approx(derived["lr"]["edge_ratio"], rel=1e-9)
    assert derived["lr"]["edge_ratio"] <= 0.5 + 1e-12


@pytest.mark.slow
def test_the_edge_is_where_the_loss_stops_falling(tmp_path):
    """Past lr_scale = 2 the residual's top mode grows; below it every logged loss falls."""
    def losses(scale):
        cfg = load_config(None, [*QUIET, "model.width=2048", "model.depth=1", "data.target=regression",
                                 "train.steps=40", "metrics.every=1", "metrics.ntk=false", "metrics.spectral=false",
                                 f"train.lr_scale={scale}", f"run.dir={tmp_path / str(scale)}"])
        run_trial(cfg)
        return [r[names.TRAIN_LOSS] for r in read_rows(tmp_path / str(scale))]

    below, above = losses(1.8), losses(2.4)
    assert all(b < a for a, b in zip(below, below[1:]))
    assert max(above) > above[0] or not math.isfinite(above[-1])


@pytest.mark.slow
def test_defaults_stay_in_the_kernel_regime_at_every_depth(tmp_path):
    """Issue 12's table with the defaults (two seeds averaged: one seed's drift at m = 128 is noisy)."""
    widths, seeds = [128, 512, 2048], [0, 1]
    for depth in (1, 2, 4, 8):
        drift, wabs = [], []
        for width in widths:
            summaries = []
            for seed in seeds:
                run = tmp_path / f"d{depth}w{width}s{seed}"
                cfg = load_config(None, [*QUIET, f"model.width={width}", f"model.depth={depth}", f"seed={seed}",
                                         "data.target=regression", "train.steps=100", "metrics.every=20",
                                         "metrics.spectral=false", f"run.dir={run}"])
                summaries.append(run_trial(cfg))
                assert summaries[-1]["status"] == "completed"
                loss = [r[names.TRAIN_LOSS] for r in read_rows(run)]
                assert all(b < a for a, b in zip(loss, loss[1:])), (depth, width, loss)
            drift.append(sum(s[names.NTK_REL_DRIFT] for s in summaries) / len(seeds))
            wabs.append(sum(s[names.DRIFT_WEIGHT_ABS] for s in summaries) / len(seeds))
        assert drift == sorted(drift, reverse=True), (depth, drift)  # falls with width
        assert abs(loglog_slope(widths, wabs) + 0.5) <= 0.15, (depth, wabs)


@pytest.mark.slow
@pytest.mark.parametrize("over", [["model.param=ntk", "model.bias=true", "model.depth=2"],
                                  ["model.arch=cnn", "model.depth=4", "model.width=32"],
                                  ["model.arch=resnet", "model.depth=4"],
                                  ["train.loss=ce", "model.depth=4"]])
def test_defaults_do_not_diverge(tmp_path, over):
    cfg = load_config(None, [*QUIET, "model.width=256", "train.steps=100", "metrics.every=20",
                             "metrics.spectral=false", f"run.dir={tmp_path}", *over])
    s = run_trial(cfg)
    loss = [r[names.TRAIN_LOSS] for r in read_rows(tmp_path)]
    assert s["status"] == "completed" and loss[-1] < loss[0], loss
    assert read_summary(tmp_path)["status"] == "completed"


def test_du_step_from_lambda_min_and_the_bound_holds(tmp_path):
    """train.lr=lambda_min is Du et al.'s eta = lambda_0 / n^2 (their summed loss) as our lr = lambda_0 / n, with
    lambda_0 the smallest eigenvalue of H_inf in closed form over the whole training set; trained on Du's own net
    (model.train_input_only, depth 0) the loss stays under (1 - lr lambda_0 / (2n))^k at every step."""
    over = ["model.param=ntk", "model.depth=0", "model.train_input_only=true", "model.width=2048",
            "data.n=16", "data.dim=8", "data.classes=1", "data.target=regression", "data.input_norm=sqrt_d",
            "train.lr=lambda_min", "train.lr_scale=200", "train.steps=40", "train.dtype=float64",
            "metrics.every=1", "metrics.spectral=false", f"run.dir={tmp_path / 'du'}", *QUIET]
    cfg = load_config(None, over)
    ds, model, rules = _model(cfg)
    x = ds.x.double()
    h_inf = (2.0 / 8) * (x @ x.T) * (math.pi - torch.arccos((x @ x.T / (x.norm(dim=1)[:, None] * x.norm(dim=1)))
                                                           .clamp(-1, 1))) / (2 * math.pi)
    h_inf.diagonal().copy_((x * x).sum(1) / 8)
    lam0 = float(torch.linalg.eigvalsh(h_inf)[0])
    lr, facts, _ = resolve_lr(cfg, model, rules, x, 1)
    assert facts["rule"] == "lambda_min" and facts["samples"] == 16
    assert lr == pytest.approx(200 * lam0 / 16, rel=1e-9)
    run_trial(cfg)
    rows = read_rows(tmp_path / "du")
    losses = [r[names.TRAIN_LOSS] for r in rows]
    q = 1 - lr * lam0 / (2 * 16)
    assert losses[-1] < losses[0] * 0.97  # it trains, slowly: the theorem's step
    assert all(loss <= losses[0] * q ** r["step"] * (1 + 1e-9) for loss, r in zip(losses, rows))
    for bad in (["model.param=standard"], ["data.n=5000"]):
        with pytest.raises(ConfigError, match="train.lr"):
            load_config(None, [*over, *bad])
    with pytest.raises(ConfigError, match="model.train_outer"):
        load_config(None, [*over, "model.train_outer=true"])
    with pytest.raises(ConfigError, match="model.depth"):
        load_config(None, ["model.depth=0"])
