"""Issue 24, item 6: a held-out split (`data.test_n`): the same training set with it or without it; test/loss and
test/acc at every logged row; ntk/test_lin_gap against a linearisation written from scratch with torch.func in
float64; and Zhang et al.'s random labels on digits, fitted, at chance on held-out digits."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import read_rows, run_cli

from overparam_dist.config import ConfigError, load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics import names
from overparam_dist.metrics.linearization import LinearizationGap
from overparam_dist.models import build_model
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0"]


@pytest.mark.parametrize("over", [["data.target=labels"], ["data.target=regression"], ["data.target=teacher"],
                                  ["data.name=digits", "data.n=100", "data.label_noise=0.5"],
                                  ["data.target=labels", "model.arch=cnn"]])
def test_the_training_set_is_the_same_with_a_held_out_set(over):
    plain = build_dataset(load_config(None, ["seed=3", *over]))
    held = build_dataset(load_config(None, ["seed=3", "data.test_n=40", *over]))
    assert torch.equal(plain.x, held.x) and torch.equal(plain.y, held.y) and plain.x_test is None
    assert held.x_test.shape == (40, *plain.x.shape[1:]) and held.y_test.shape[0] == 40
    assert torch.allclose(held.x_test.flatten(1).norm(dim=1), torch.ones(40), atol=1e-5)  # unit norm, as x
    flat_train, flat_test = plain.x.flatten(1), held.x_test.flatten(1)
    assert torch.cdist(flat_test, flat_train).min() > 1e-6  # no held-out sample is a training sample
    if "data.name=digits" in over:  # label noise reaches the training labels only: held-out digits keep theirs
        from sklearn.datasets import load_digits

        bunch = load_digits()
        pool = torch.tensor(bunch.images.reshape(len(bunch.images), -1), dtype=torch.float32)
        pool = pool / pool.norm(dim=1, keepdim=True)
        nearest = torch.cdist(held.x_test, pool).argmin(1)
        assert torch.equal(torch.tensor(bunch.target)[nearest], held.y_test)


def test_teacher_targets_come_from_the_same_teacher():
    """The teacher is linear after its ReLU layer: one teacher, seen on train and test together, has one scale."""
    from overparam_dist.data import _teacher_targets

    g = torch.Generator().manual_seed(0)
    x, x_test = torch.randn(30, 5), torch.randn(12, 5)
    y, y_test = _teacher_targets(x, 3, torch.Generator().manual_seed(0), x_test=x_test)
    both, _ = _teacher_targets(torch.cat([x, x_test]), 3, g)
    ratio = both[:30] / y  # the same weights, another normalisation: one constant factor for every entry
    assert torch.allclose(both[30:] / y_test, ratio.mean().expand(12, 3), rtol=1e-5)
    assert torch.allclose(ratio, ratio.mean().expand(30, 3), rtol=1e-5)


def test_bad_held_out_sets_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="'data.test_n' = 1800: digits has only 1697 samples outside the training"):
        build_dataset(load_config(None, ["data.name=digits", "data.n=100", "data.test_n=1800"]))
    with pytest.raises(ConfigError, match="'data.test_n' = -1: must be >= 0"):
        load_config(None, ["data.test_n=-1"])
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, arr in (("train-images-idx3-ubyte.gz", np.zeros((20, 28, 28))), ("train-labels-idx1-ubyte.gz",
                                                                                np.zeros(20))):
        arr = np.asarray(arr, dtype=np.uint8)
        with gzip.open(raw / name, "wb") as f:
            f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())
    res = run_cli("train", "data.name=mnist", f"data.root={tmp_path}", "data.n=10", "data.test_n=5",
                  "data.verify=false", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "no MNIST test files" in res.stderr, res.stderr


@pytest.mark.parametrize("param,target", [("paper", "regression"), ("ntk", "labels")])
def test_test_lin_gap_equals_a_linearised_net_written_with_torch_func(param, target):
    """f_t^lin(X*) of the closed form against f_0(X*) + J_0(X*) (theta_t - theta_0), theta_t trained by the same GD
    on the linearised training loss (torch.func.jvp), float64; and the metric against the real net trained the same
    way, to 1e-6."""
    cfg = load_config(None, [f"model.param={param}", "model.width=40", "model.depth=2", "data.n=8", "data.dim=6",
                             "data.test_n=5", f"data.target={target}", "data.classes=3", "seed=2"])
    ds = build_dataset(cfg)
    x, xt = ds.x.double(), ds.x_test.double()
    onehot = target == "labels"
    y = torch.nn.functional.one_hot(ds.y, 3).double() if onehot else ds.y.double()
    yt = torch.nn.functional.one_hot(ds.y_test, 3).double() if onehot else ds.y_test.double()
    model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    step_of = {n: 0.6 * rules[n].lr_scale for n, p in model.named_parameters() if p.requires_grad}
    lin = LinearizationGap(model, x, y, step_of, x_test=xt, test_targets=yt)

    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = list(step_of)

    def f(params, inputs):
        return torch.func.functional_call(model, {**theta0, **params}, (inputs,))

    def f_lin(params, inputs):
        base = {n: theta0[n] for n in trained}
        delta = {n: params[n] - theta0[n] for n in trained}
        out, tangent = torch.func.jvp(lambda ps: f(ps, inputs), (base,), (delta,))
        return out + tangent

    def gd(fn, steps):
        params = {n: theta0[n].clone() for n in trained}
        for _ in range(steps):
            grads = torch.func.grad(lambda ps: 0.5 * (fn(ps, x) - y).pow(2).sum(1).mean())(params)
            params = {n: params[n] - step_of[n] * grads[n] for n in trained}
        return params

    r0_test = (f(theta0, xt) - yt).reshape(-1)
    for steps in (0, 1, 6, 20):
        want = f_lin(gd(f_lin, steps), xt).reshape(-1)
        assert float((lin.linear_test_outputs(steps) - want).norm() / r0_test.norm()) < 1e-6, steps
        net = gd(f, steps)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(net.get(n, theta0[n]))
        gap = float((f(net, xt).reshape(-1) - want).norm() / r0_test.norm())
        assert lin.metrics(steps)[names.NTK_TEST_LIN_GAP] == pytest.approx(gap, rel=1e-6, abs=1e-12), steps
        if steps == 0:
            assert gap == 0


def test_a_trial_logs_test_loss_and_accuracy_at_every_row(tmp_path):
    cfg = load_config(None, [*QUIET, "model.width=32", "data.n=16", "data.test_n=24", "train.steps=20",
                             "data.target=labels", "metrics.every=5", "train.stop_at_fit=false", "train.dtype=float64",
                             f"run.dir={tmp_path}"])
    summary = run_trial(cfg)
    rows = read_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20]
    assert all(names.TEST_LOSS in r and names.TEST_ACC in r and names.NTK_TEST_LIN_GAP in r for r in rows)
    assert rows[0][names.NTK_TEST_LIN_GAP] == 0
    # Step 0 against the model at init built here: the same weights (seeded), the same held-out set.
    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    with torch.no_grad():
        out = model(ds.x_test.double())
    onehot = torch.nn.functional.one_hot(ds.y_test, ds.num_outputs).double()
    assert rows[0][names.TEST_LOSS] == pytest.approx(float(0.5 * (out - onehot).pow(2).sum(1).mean()), rel=1e-12)
    assert rows[0][names.TEST_ACC] == float((out.argmax(1) == ds.y_test).double().mean())
    assert summary[names.TEST_LOSS] == rows[-1][names.TEST_LOSS] and summary[names.TEST_ACC] == rows[-1][names.TEST_ACC]


@pytest.mark.slow
def test_random_labels_on_digits_are_fitted_and_held_out_accuracy_is_chance(tmp_path):
    """Zhang et al. 2017: every training label random, fitted to 100%; on 1000 held-out digits the accuracy is
    chance. One trial's accuracy scatters by about 5 points around 10% (measured 5.0-20.6% over these 8 seeds):
    its held-out predictions follow the random labels of the few near-identical training digits each test digit
    sits next to, so the 1000 test points are worth far fewer independent ones. The mean over 8 seeds is within 3
    points of 10%, and its 95% interval over seeds contains 10%."""
    from overparam_dist.analysis.verdicts import seed_interval

    accs = []
    for seed in range(8):
        run = tmp_path / f"s{seed}"
        s = run_trial(load_config(ROOT_PAPER_FC, [*QUIET, "data.name=digits", "data.classes=10", "data.n=128",
                                                  "data.test_n=1000", "data.label_noise=1.0", "model.width=512",
                                                  "train.steps=5000", "metrics.every=0", "metrics.ntk=false",
                                                  "metrics.spectral=false", f"seed={seed}", f"run.dir={run}"]))
        assert s[names.TRAIN_ACC] == 1.0 and s["steps"] < 5000, s
        accs.append(s[names.TEST_ACC])
    mean, (lo, hi) = seed_interval(accs)
    print(f"\ntest/acc over seeds: {accs}: mean {mean:.4f} [{lo:.4f}, {hi:.4f}]")
    assert abs(mean - 0.1) <= 0.03 and lo <= 0.1 <= hi, accs


ROOT_PAPER_FC = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "paper_fc.yaml"
