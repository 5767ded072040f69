"""feature/*: pre-activation movement from init on the probe set, against the pre-activations recomputed from the
weights with plain torch ops (no hooks), float64."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import read_rows

from overparam_dist.config import load_config
from overparam_dist.metrics import names
from overparam_dist.metrics.features import feature_movement
from overparam_dist.metrics.tracker import TheoryMetrics
from overparam_dist.models import build_model
from overparam_dist.train import run_trial

SHAPES = {"fc": (8,), "resnet": (8,), "cnn": (1, 4, 4)}


def _setup(arch, param, bias=False, depth=2):
    cfg = load_config(None, [f"model.arch={arch}", f"model.param={param}", f"model.bias={str(bias).lower()}",
                             f"model.depth={depth}", "model.width=24", "data.dim=16" if arch == "cnn" else "data.dim=8",
                             "data.classes=3", "model.tau=0.5", "seed=4"])
    model, rules = build_model(cfg, SHAPES[arch], 3, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, *SHAPES[arch], generator=g, dtype=torch.float64)
    tm = TheoryMetrics(model, rules, cfg.seed, x, None, param=param, width=24, depth=depth, arch=arch, bias=bias,
                       train_outer=param != "paper", classes=3, track_ntk=False, spectral=False)
    return cfg, model, x, tm


def _multiplier(param, fan_in):
    """The forward multiplier on W x of an input or hidden layer (models/init.py's table): ntk's sqrt(2 / fan_in)."""
    return math.sqrt(2.0 / fan_in) if param == "ntk" else 1.0


def _manual_preacts(model, x, arch, param, tau=0.5):
    """Each ReLU's input from the parameter tensors: layer name -> tensor."""
    p = {n: t.detach() for n, t in model.named_parameters()}
    layers = ["input"] + [f"hidden.{i}" for i in range(len(model.hidden))]
    out, h = {}, x if arch == "cnn" else x.flatten(1)
    for name in layers:
        w, b = p[f"{name}.weight"], p.get(f"{name}.bias")
        if arch == "cnn":
            k = w.shape[-1] // 2
            z = F.conv2d(F.pad(h, (k, k, k, k), mode="circular"), w) * _multiplier(param, w[0].numel())
            z = z if b is None else z + b[:, None, None]
        else:
            z = (h @ w.T) * _multiplier(param, w.shape[1])
            z = z if b is None else z + b
        if arch == "resnet" and name != "input":
            z = h + tau * z
        out[name] = z
        h = torch.relu(z)
    return out


def _expected(pre0, pre, trained):
    out = {}
    for layer in pre0:
        d = pre[layer] - pre0[layer]
        out[names.feature_delta_rms(layer)] = float(d.pow(2).mean().sqrt())
        out[names.feature_delta_rel(layer)] = float(d.norm() / pre0[layer].norm())
    num = sum(float((pre[la] - pre0[la]).pow(2).sum()) for la in trained)
    den = sum(float(pre0[la].pow(2).sum()) for la in trained)
    out[names.FEATURE_DELTA_REL] = math.sqrt(num / den)
    return out


def _features(row):
    return {k: v for k, v in row.items() if k.startswith("feature/")}


def _noise(params, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("arch,param,bias", [("fc", "ntk", False), ("fc", "mup", True), ("fc", "paper", False),
                                             ("resnet", "ntk", True), ("cnn", "ntk", True)])
def test_feature_movement_equals_manual_preactivations(arch, param, bias):
    cfg, model, x, tm = _setup(arch, param, bias)
    pre0 = _manual_preacts(model, x, arch, param)
    at_init = _features(tm.compute(first=True))
    assert at_init[names.FEATURE_DELTA_REL] == 0.0
    assert all(at_init[names.feature_delta_rms(la)] == 0.0 for la in pre0)
    # a few SGD steps on a squared loss: every trained layer moves (paper's A is frozen)
    trained = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trained, lr=0.05)
    y = torch.randn(10, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum(1).mean()).backward()
        opt.step()
    _noise(trained, 1e-3)  # and off the gradient's span
    pre = _manual_preacts(model, x, arch, param)
    trained_layers = [la for la in pre0 if model.get_submodule(la).weight.requires_grad]
    assert trained_layers == (["hidden.0", "hidden.1"] if param == "paper" else list(pre0))
    want, got = _expected(pre0, pre, trained_layers), _features(tm.compute(first=False))
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-10, abs=1e-15), k
    for la in trained_layers:
        assert got[names.feature_delta_rms(la)] > 1e-6
    if param == "paper":  # frozen A: its features never move, and the pooled ratio leaves ||h_input(0)|| out
        assert got[names.feature_delta_rms("input")] == 0.0 == got[names.feature_delta_rel("input")]
        everything = math.sqrt(sum(float((pre[la] - pre0[la]).pow(2).sum()) for la in pre0)
                               / sum(float(pre0[la].pow(2).sum()) for la in pre0))
        assert got[names.FEATURE_DELTA_REL] > everything * 1.01


@pytest.mark.parametrize("arch", ["cnn", "resnet"])
def test_only_layers_before_a_relu_move_its_features(arch):
    _, model, _, tm = _setup(arch, "ntk", bias=True)
    layers = ["input", "hidden.0", "hidden.1"]
    _noise([model.output.weight, model.output.bias], 0.5)  # the read-out comes after every ReLU
    got = _features(tm.compute(first=False))
    assert len(got) == 2 * len(layers) + 1 and all(v == 0.0 for v in got.values()), got
    _noise([model.get_submodule("hidden.1").weight], 0.05)  # moves the last ReLU's input only
    got = _features(tm.compute(first=False))
    assert got[names.feature_delta_rms("hidden.1")] > 0 and got[names.feature_delta_rms("hidden.0")] == 0.0
    _noise([model.input.weight], 0.05)  # the first layer moves every ReLU's input
    got = _features(tm.compute(first=False))
    assert all(math.isfinite(v) and v > 0 for v in got.values()), got


def test_sharded_sums_equal_the_whole_layer():
    """A layer split over two 'ranks' along its units gives the unsharded values once its sums are reduced."""
    g = torch.Generator().manual_seed(3)
    init = {la: torch.randn(6, 10, generator=g, dtype=torch.float64) for la in ("input", "hidden.0")}
    now = {la: h + 0.1 * torch.randn(h.shape, generator=g, dtype=h.dtype) for la, h in init.items()}
    now["input"] = init["input"].clone()  # an unmoved, replicated layer is never summed
    init["hidden.0"][:, :5] = 0.0  # rank 0's block starts at zero: only the reduced ||h(0)|| is non-zero
    whole = feature_movement(init, now, {"input", "hidden.0"})
    parts = [{la: (h[:, 5 * r:5 * r + 5] if la == "hidden.0" else h) for la, h in d.items()}
             for r in (0, 1) for d in (init, now)]
    sent: list[torch.Tensor] = []
    feature_movement(parts[2], parts[3], {"input", "hidden.0"}, {"hidden.0"}, lambda t: sent.append(t.clone()))
    got = feature_movement(parts[0], parts[1], {"input", "hidden.0"}, {"hidden.0"}, lambda t: t.add_(sent.pop(0)))
    assert not sent and got.keys() == whole.keys()
    assert got == pytest.approx(whole, rel=1e-12)
    alone = feature_movement(parts[0], parts[1], {"input", "hidden.0"})  # unreduced: rank 0's zero block alone
    assert names.feature_delta_rel("hidden.0") not in alone


def test_a_trial_logs_feature_movement_every_row(tmp_path):
    run_trial(load_config(None, ["model.width=32", "data.n=16", "train.steps=6", "metrics.every=2", "run.quiet=true",
                                 "wandb.mode=disabled", "checkpoint.every=0", "train.stop_at_fit=false",
                                 f"run.dir={tmp_path / 'run'}"]))
    rows = read_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    for layer in ("input", "hidden.0", "hidden.1"):  # paper: A is frozen, so only the hidden layers move
        key = names.feature_delta_rms(layer)
        assert rows[0][key] == 0.0
        assert all(r[key] > 0 for r in rows[1:]) if layer != "input" else all(r[key] == 0 for r in rows)
    assert rows[0][names.FEATURE_DELTA_REL] == 0.0 and all(r[names.FEATURE_DELTA_REL] > 0 for r in rows[1:])
