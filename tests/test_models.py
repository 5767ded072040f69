import math

import pytest
import torch

from overparam_dist.config import load_config
from overparam_dist.models import build_model
from overparam_dist.models.init import TILE, generate_block, generate_full, rules_for

D, C, M = 16, 10, 2048


def _build(*overrides, in_shape=(D,), out=C, dtype=torch.float32):
    cfg = load_config(None, [f"data.dim={D}", f"data.classes={C}", *overrides])
    return build_model(cfg, in_shape, out, dtype=dtype)


def _expected_var(param, role, fan_in, fan_out):
    if param == "paper":
        return 1.0 / C if role == "output" else 2.0 / fan_out
    if param == "ntk":
        return 1.0
    if param == "standard":
        return 1.0 / (3 * fan_in)
    return {"input": 2.0 / fan_in, "hidden": 2.0 / fan_in, "output": 1.0 / fan_in ** 2}[role]


@pytest.mark.parametrize("param", ["paper", "ntk", "standard", "mup"])
def test_init_variance_matches_parameterization(param):
    model, _ = _build(f"model.param={param}", f"model.width={M}", "model.depth=2", "model.bias=true"
                      if param == "standard" else "model.bias=false")
    for name, mod, role in [("input", model.input, "input"), ("hidden.0", model.hidden[0], "hidden"),
                            ("hidden.1", model.hidden[1], "hidden"), ("output", model.output, "output")]:
        fan_in, fan_out = mod.weight.shape[1], mod.weight.shape[0]
        want = _expected_var(param, role, fan_in, fan_out)
        got = mod.weight.double().var().item()
        assert abs(got / want - 1) < 0.05, (param, name, got, want)
        assert abs(mod.weight.double().mean().item()) < 5 * math.sqrt(want / mod.weight.numel())
        if param == "ntk":
            gain = 1.0 if role == "output" else 2.0
            assert mod.weight_multiplier == pytest.approx(math.sqrt(gain / fan_in))
        else:
            assert mod.weight_multiplier == 1.0
        if param == "standard":  # PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            assert mod.bias.abs().max() <= 1 / math.sqrt(fan_in)
            assert abs(mod.bias.double().var().item() / (1 / (3 * fan_in)) - 1) < 0.2 or mod.bias.numel() < 100


def test_mup_step_scales_follow_tensor_programs_v_table_3():
    """TP V, table 3 (SGD), against our step scales: input weights and all biases lr * fan_out, hidden weights lr,
    output weights lr / fan_in (fan_in of the output layer = m)."""
    model, rules = _build("model.param=mup", f"model.width={M}", "model.depth=2", "model.bias=true", out=3)
    table = {"input.weight": M, "input.bias": M, "hidden.0.weight": 1, "hidden.0.bias": M, "hidden.1.weight": 1,
             "hidden.1.bias": M, "output.weight": 1 / M, "output.bias": 3}
    assert {n: rules[n].lr_scale for n, _ in model.named_parameters()} == pytest.approx(table, rel=0)


def test_cnn_keeps_the_activation_norm_through_depth():
    """Circular padding: |h_L| / |h_0| at init within 10 % at depth 5 (4 x 4 images, He init per fan)."""
    cfg = load_config(None, ["model.arch=cnn", "model.param=paper", "model.width=256", "model.depth=5",
                             "data.dim=16", "data.n=64"])
    from overparam_dist.data import build_dataset

    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    norms, h = [], torch.relu(model.input(ds.x.double()))
    norms.append(float(h.pow(2).sum()))
    for layer in model.hidden:
        h = torch.relu(layer(h))
        norms.append(float(h.pow(2).sum()))
    ratios = [math.sqrt(v / norms[0]) for v in norms]
    assert all(abs(r - 1) < 0.1 for r in ratios), ratios


def test_paper_freezes_outer_layers_and_they_get_no_gradient():
    model, rules = _build("model.param=paper", "model.width=64")
    assert not model.input.weight.requires_grad and not model.output.weight.requires_grad
    assert all(p.requires_grad for p in model.hidden.parameters())
    model(torch.randn(5, D)).pow(2).sum().backward()
    assert model.input.weight.grad is None and model.output.weight.grad is None
    assert all(p.grad is not None for p in model.hidden.parameters())
    assert rules["hidden.0.weight"].lr_scale == pytest.approx(1 / 64)  # step = lr / m
    trained, _ = _build("model.param=paper", "model.width=64", "model.train_outer=true")
    assert trained.input.weight.requires_grad and trained.output.weight.requires_grad


def test_init_depends_only_on_seed():
    a, _ = _build("model.width=300", "seed=3")
    b, _ = _build("model.width=300", "seed=3")
    c, _ = _build("model.width=300", "seed=4")
    for (n, p), q, r in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(p, q), n
        assert not torch.equal(p, r), n


def test_any_block_regenerates_bit_identically_across_tile_boundaries():
    model, _ = _build()
    rule, _ = rules_for("paper", "hidden", model.hidden[0], M, False)
    shape = (TILE + 300, 2 * TILE + 17)
    full = generate_full(rule, 5, "w", torch.Size(shape))
    for rows, cols in [((0, shape[0]), (0, shape[1])), ((TILE - 3, TILE + 40), (5, 2 * TILE + 1)),
                       ((17, 18), (2 * TILE, 2 * TILE + 17))]:
        block = generate_block(rule, 5, "w", shape, rows, cols)
        assert torch.equal(block, full[rows[0]:rows[1], cols[0]:cols[1]])


def test_float64_model_holds_the_same_initial_values():
    a, _ = _build("model.width=64")
    b, _ = _build("model.width=64", dtype=torch.float64)
    for p, q in zip(a.parameters(), b.parameters()):
        assert q.dtype == torch.float64 and torch.equal(p.double(), q)


def test_forward_formulas():
    x = torch.randn(4, D, dtype=torch.float64)
    fc, _ = _build("model.param=ntk", "model.width=32", "model.depth=2", dtype=torch.float64)
    h = torch.relu(math.sqrt(2 / D) * x @ fc.input.weight.T)
    for layer in fc.hidden:
        h = torch.relu(math.sqrt(2 / 32) * h @ layer.weight.T)
    torch.testing.assert_close(fc(x), math.sqrt(1 / 32) * h @ fc.output.weight.T)

    res, _ = _build("model.arch=resnet", "model.tau=0.3", "model.width=32", "model.depth=3", dtype=torch.float64)
    h = torch.relu(x @ res.input.weight.T)
    for layer in res.hidden:
        h = torch.relu(h + 0.3 * h @ layer.weight.T)
    torch.testing.assert_close(res(x), h @ res.output.weight.T)

    cnn, _ = _build("model.arch=cnn", "model.width=8", in_shape=(1, 4, 4), dtype=torch.float64)
    img = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    def wrap(t):  # circular padding: the image is a torus
        return torch.nn.functional.pad(t, (1, 1, 1, 1), mode="circular")

    h = torch.relu(torch.nn.functional.conv2d(wrap(img), cnn.input.weight))
    for layer in cnn.hidden:
        h = torch.relu(torch.nn.functional.conv2d(wrap(h), layer.weight))
    torch.testing.assert_close(cnn(img), h.flatten(1) @ cnn.output.weight.T)
    assert cnn.output.weight.shape == (C, 8 * 16)
