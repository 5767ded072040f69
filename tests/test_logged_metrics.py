"""Issue 29: the logged keys the metric reference (docs/reference/metrics.md) had no independent check for, each
against a computation made here from the model at init, the GD update rule or the logged rows themselves:
train/loss, train/acc, train/grad_norm, drift/weight_abs, train/lr, time/*, conv/rate, conv/steps_to_fit_resolution,
ntk/lambda_min_inf and the regime summary's kernel_move, loss_rise and feature_move."""

import math

import numpy as np
import pytest
import torch
import yaml
from conftest import read_rows

from overparam_dist.config import load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics import names
from overparam_dist.metrics.analytic import infinite_width_ntk
from overparam_dist.models import build_model
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0", "train.dtype=float64", "model.width=32",
         "data.n=12", "train.stop_at_fit=false", "metrics.spectral=false"]


def _init_model(cfg):
    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    return ds, model


def test_train_loss_accuracy_and_gradient_norm_at_init_equal_the_model_built_here(tmp_path):
    """Row 0 against the model at init rebuilt here (the same seeded weights and data); then under `ntk` with a
    given step, where every parameter takes the same step lr, one GD update moves the weights by lr x the gradient:
    drift/weight_abs at step 1 = lr x train/grad_norm at step 0."""
    lr = 0.3
    cfg = load_config(None, [*QUIET, "model.param=ntk", "data.target=labels", f"train.lr={lr}", "train.steps=3",
                             "metrics.every=1", f"run.dir={tmp_path}"])
    run_trial(cfg)
    rows = read_rows(tmp_path)
    ds, model = _init_model(cfg)
    out = model(ds.x.double())
    onehot = torch.nn.functional.one_hot(ds.y, ds.num_outputs).double()
    loss = 0.5 * (out - onehot).pow(2).sum(1).mean()  # train.loss=mse: half the squared error summed over outputs
    loss.backward()
    grad = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters() if p.requires_grad))
    assert rows[0][names.TRAIN_LOSS] == pytest.approx(float(loss.detach()), rel=1e-12)
    assert rows[0][names.TRAIN_ACC] == float((out.argmax(1) == ds.y).double().mean())
    assert rows[0][names.TRAIN_GRAD_NORM] == pytest.approx(grad, rel=1e-10)
    assert rows[1][names.DRIFT_WEIGHT_ABS] == pytest.approx(lr * grad, rel=1e-10)
    derived = yaml.safe_load((tmp_path / "config.yaml").read_text())["derived"]
    assert rows[0][names.TRAIN_LR] == derived["effective_lr"]["hidden.0.weight"] == lr


def test_timings_convergence_and_regime_summary_agree_with_the_rows(tmp_path):
    """One regression output (C = 1), every step logged, the probe = the training set: the rows hold everything the
    summary's convergence and regime keys are made of."""
    cfg = load_config(None, [*QUIET, "model.param=ntk", "model.depth=1", "data.classes=1", "train.steps=30",
                             "metrics.every=1", "metrics.window=20", f"run.dir={tmp_path}"])
    summary = run_trial(cfg)
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == list(range(31))
    for r in rows[1:]:  # samples per second x seconds per step = the samples of one full-batch step
        assert r[names.TIME_SAMPLES] * r[names.TIME_STEP] == pytest.approx(cfg.data.n, rel=1e-9)
        assert 0 < r[names.TIME_METRICS] < summary["wall_s"]
    # conv/rate: the least-squares slope of log(loss) over the steps of the trailing window, by numpy
    window = [r for r in rows if r["step"] > 30 - cfg.metrics.window]
    slope = np.polyfit([r["step"] for r in window], np.log([r[names.TRAIN_LOSS] for r in window]), 1)[0]
    assert summary[names.CONV_RATE] == pytest.approx(slope, rel=1e-9)
    assert summary[names.CONV_STEPS_TO_FIT_RESOLUTION] == 1  # full-batch GD: every step is seen
    losses = [r[names.TRAIN_LOSS] for r in rows]
    assert summary[names.REGIME_LOSS_RISE] == pytest.approx(max(losses) / losses[0], rel=1e-12)
    # With C = 1 the step-weighted full kernel is the probe kernel times one step: their relative moves agree
    assert summary[names.REGIME_KERNEL_MOVE] == pytest.approx(rows[-1][names.NTK_REL_DRIFT], rel=1e-6)
    assert summary[names.REGIME_FEATURE_MOVE] == rows[-1][names.FEATURE_DELTA_REL]
    assert summary[names.REGIME_EDGE_RATIO_INIT] == rows[0][names.REGIME_EDGE_RATIO]
    ds = build_dataset(cfg)
    k_inf = infinite_width_ntk(ds.x.double().flatten(1), 1, "ntk", classes=1)
    assert summary[names.NTK_LAMBDA_MIN_INF] == pytest.approx(float(torch.linalg.eigvalsh(k_inf)[0]), rel=1e-9)


def test_steps_to_fit_resolution_under_sgd_is_the_logging_interval(tmp_path):
    cfg = load_config(None, [*QUIET, "train.batch_size=4", "train.steps=10", "metrics.every=5", "metrics.ntk=false",
                             f"run.dir={tmp_path}"])
    summary = run_trial(cfg)
    assert summary[names.CONV_STEPS_TO_FIT_RESOLUTION] == 5
    rows = read_rows(tmp_path)
    assert all(r[names.TIME_SAMPLES] * r[names.TIME_STEP] == pytest.approx(4, rel=1e-9) for r in rows[1:])
