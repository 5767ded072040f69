"""metrics/ntk.py (layer-wise empirical NTK) against the torch.func Jacobian-contraction NTK, in float64.

The reference materialises every per-sample Jacobian over the trainable parameters (vmap of jacrev over
functional_call) and contracts it; the layer-wise code never forms it, so agreement to ~1e-15 checks
the multipliers, biases, conv geometry, weight sharing, frozen layers and the fallback route.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, vmap

from overparam_dist.config import load_config
from overparam_dist.metrics import ntk as ntk_mod
from overparam_dist.metrics import ntk_plan
from overparam_dist.metrics.ntk import empirical_ntk
from overparam_dist.models import build_model

TOL = 1e-8
N, D, C = 6, 8, 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra intra-op threads only add synchronisation (on a loaded box, 100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def reference_ntk(model: nn.Module, x: torch.Tensor, outputs: str) -> torch.Tensor:
    trained = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}

    def f(params, xi):
        return functional_call(model, params, (xi[None],)).reshape(-1)

    jac = vmap(jacrev(f), in_dims=(None, 0))(trained, x)
    n = x.shape[0]
    J = torch.cat([j.reshape(n, j.shape[1], -1) for j in jac.values()], dim=-1).double()  # (n, C, P)
    if outputs == "full":
        J = J.reshape(n * J.shape[1], -1)
        return J @ J.T
    return torch.einsum("icp,jcp->ij", J, J)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def assert_exact(model: nn.Module, x: torch.Tensor, tol: float = TOL, **kw) -> None:
    for outputs in ("trace", "full"):
        K = empirical_ntk(model, x, outputs=outputs, **kw)
        assert K.dtype == torch.float64
        ref = reference_ntk(model, x, outputs)
        assert K.shape == ref.shape
        assert rel_err(K, ref) <= tol, (outputs, rel_err(K, ref))


def our_model(arch: str, param: str, bias: bool, train_outer: bool | None = None, seed: int = 0):
    over = [f"model.arch={arch}", f"model.param={param}", f"model.bias={bias}", "model.depth=2",
            f"seed={seed}"]
    if arch == "cnn":
        over += ["model.width=8", "data.dim=16"]
        shape = (1, 4, 4)
    else:
        over += ["model.width=32", f"data.dim={D}"]
        shape = (D,)
    if arch == "resnet":
        over.append("model.tau=0.3")
    if train_outer is not None:
        over.append(f"model.train_outer={train_outer}")
    model, _ = build_model(load_config(None, over), shape, C, dtype=torch.float64)
    x = torch.randn(N, *shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return model, x


# --------------------------------------------------------------------------------------------------
# Our models.

@pytest.mark.parametrize("param", ["paper", "ntk", "standard", "mup"])
@pytest.mark.parametrize("bias", [False, True])
def test_fc_all_parameterizations(param, bias):
    model, x = our_model("fc", param, bias)
    assert_exact(model, x)


@pytest.mark.parametrize("bias", [False, True])
def test_fc_paper_train_outer(bias):
    model, x = our_model("fc", "paper", bias, train_outer=True)
    assert all(p.requires_grad for p in model.parameters())
    assert_exact(model, x)


@pytest.mark.parametrize("param", ["paper", "ntk"])
@pytest.mark.parametrize("bias", [False, True])
def test_cnn(param, bias):
    model, x = our_model("cnn", param, bias)
    assert_exact(model, x)


@pytest.mark.parametrize("param", ["paper", "ntk", "mup"])
def test_resnet(param):
    model, x = our_model("resnet", param, bias=True)
    assert_exact(model, x)


@pytest.mark.parametrize("route", ["gram", "psg"])
def test_both_conv_routes(route, monkeypatch):
    """Force each weight route on every layer (the flop estimate alone would pick psg for this small cnn)."""
    costs = (0.0, 1.0) if route == "gram" else (1.0, 0.0)
    monkeypatch.setattr(ntk_mod, "_route_costs", lambda *a, **k: costs)
    model, x = our_model("cnn", "ntk", bias=True)
    assert_exact(model, x)


# --------------------------------------------------------------------------------------------------
# Hand-built modules.

def test_sequential_uneven_frozen_layernorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 5), nn.LayerNorm(5), nn.Tanh(),
                          nn.Linear(5, 3)).double()
    model[2].requires_grad_(False)  # frozen middle layer: excluded from the kernel
    x = torch.randn(N, 7, dtype=torch.float64)
    assert_exact(model, x)


class ConvNet(nn.Module):
    """Stride 2, dilation, groups, 'same' padding with an even kernel, circular padding, a plain bias."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=2, dilation=2, groups=2, bias=False)
        self.c3 = nn.Conv2d(6, 4, 2, padding="same")
        self.c4 = nn.Conv2d(4, 4, 3, padding=1, padding_mode="circular", groups=4)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        h = F.relu(self.c1(x))
        h = torch.tanh(self.c2(h))
        h = F.relu(self.c3(h))
        h = torch.tanh(self.c4(h))
        return self.head(h.flatten(1))


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("route", ["auto", "gram", "psg"])
def test_conv_geometry(route, monkeypatch):
    if route != "auto":
        costs = (0.0, 1.0) if route == "gram" else (1.0, 0.0)
        monkeypatch.setattr(ntk_mod, "_route_costs", lambda *a, **k: costs)
    torch.manual_seed(1)
    model = ConvNet().double()
    x = torch.randn(N, 2, 8, 8, dtype=torch.float64)
    assert_exact(model, x)


class SharedAndPositions(nn.Module):
    """A Linear on (n, T, in) inputs, one module called twice, and a weight used outside its module."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Linear(5, 6)
        self.shared = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)
        self.scale = nn.Parameter(torch.tensor(1.3))  # bare parameter: fallback

    def forward(self, x):
        h = torch.tanh(self.tok(x.view(x.shape[0], 4, 5)))  # positions T = 4
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h)).mean(1)  # second call of the same module
        return self.scale * self.out(h)


class Misused(nn.Module):
    """The weight of `a` also enters the output directly (F.linear outside a's forward)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x)) + 0.5 * F.linear(x, self.a.weight)
        return self.b(h)


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4, bias=False)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight  # tied: cross-module gradient terms
        self.c = nn.Linear(4, 3)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


class OwnForward(nn.Linear):
    """A Linear subclass whose forward is not nn.Linear's: must not be routed as y = W a + b."""

    def forward(self, x):
        return F.linear(x, self.weight ** 2, self.bias)


class InPlace(nn.Module):
    """In-place ReLU on a Linear output; with mutate=True the first Linear's input is also modified in
    place after the layer read it (legal for autograd here, since a's weight gradient is never requested
    by a backward through the model - but our capture must not read the mutated value)."""

    def __init__(self, mutate: bool = True):
        super().__init__()
        self.mutate = mutate
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x):
        u = x * 1.0
        h = F.relu(self.a(u), inplace=True)
        if self.mutate:
            u.mul_(2.0)
            return self.b(h) + u[:, :3]
        return self.b(h) + 2.0 * u[:, :3]


@pytest.mark.parametrize("cls,d", [(SharedAndPositions, 20), (Misused, 4), (Tied, 4)])
def test_sharing_positions_misuse(cls, d):
    torch.manual_seed(2)
    model = cls().double()
    x = torch.randn(N, d, dtype=torch.float64)
    assert_exact(model, x)


def test_inplace_ops():
    torch.manual_seed(2)
    model = InPlace(mutate=True).double()
    x = torch.randn(N, 4, dtype=torch.float64)
    model.mutate = False  # the reference (autograd through the mutated input would refuse)
    refs = {o: reference_ntk(model, x, o) for o in ("trace", "full")}
    model.mutate = True
    for o, ref in refs.items():
        assert rel_err(empirical_ntk(model, x, outputs=o), ref) <= TOL


def test_linear_subclass_with_own_forward_goes_to_fallback():
    torch.manual_seed(3)
    model = nn.Sequential(OwnForward(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    assert [layer.module for layer in ntk_plan.RoutePlan(model).layers] == [model[2]]
    assert_exact(model, torch.randn(N, 4, dtype=torch.float64))


def test_misuse_is_rerouted_not_ignored():
    model = Misused().double()
    plan = ntk_plan.RoutePlan(model)
    assert [layer.module for layer in plan.layers] == [model.a, model.b]
    with pytest.raises(ntk_plan.Reroute) as e:
        ntk_mod._capture(model, plan, torch.randn(N, 4, dtype=torch.float64), check_independence=False)
    assert e.value.layer_ids == {0}  # `a` goes to the fallback, `b` stays layer-wise


def test_batchnorm_train_raises_eval_exact():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(N, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="BatchNorm"):
        empirical_ntk(model, x)
    model.eval()
    assert_exact(model, x)


def test_batch_coupling_detected():
    class Center(nn.Module):
        def forward(self, h):
            return h - h.mean(0, keepdim=True)

    model = nn.Sequential(nn.Linear(4, 6), Center(), nn.Linear(6, 3)).double()
    with pytest.raises(ValueError, match="depends on the other samples"):
        empirical_ntk(model, torch.randn(N, 4, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# Blocks, reduce_fn, dtype, side effects.

@pytest.mark.parametrize("outputs", ["trace", "full"])
def test_blocked_equals_unblocked(outputs):
    torch.manual_seed(5)
    model = SharedAndPositions().double()
    x = torch.randn(11, 20, dtype=torch.float64)
    K = empirical_ntk(model, x, outputs=outputs)
    for b in (1, 4, 5):
        Kb = empirical_ntk(model, x, outputs=outputs, block_size=b)
        assert rel_err(Kb, K) <= 1e-13
    cnn, xc = our_model("cnn", "ntk", bias=True)
    xc = torch.cat([xc, xc[:3] * 0.5])
    Kc = empirical_ntk(cnn, xc, outputs=outputs)
    assert rel_err(empirical_ntk(cnn, xc, outputs=outputs, block_size=4), Kc) <= 1e-13


@pytest.mark.parametrize("outputs", ["trace", "full"])
def test_tiles_under_a_memory_cap_and_shared_out_over_ranks_equal_the_whole_kernel(outputs):
    """metrics.ntk_probe=all: tiles sized by a memory cap, and each of 3 ranks computing its round-robin share of the
    tiles, whose sum (the all-reduce over dp) is the untiled kernel, float64, to 1e-10 (measured: exact)."""
    from overparam_dist.metrics.ntk import tile_samples
    from overparam_dist.metrics.ntk_plan import RoutePlan

    torch.manual_seed(7)
    model = SharedAndPositions().double()
    x = torch.randn(23, 20, dtype=torch.float64)
    K = empirical_ntk(model, x, outputs=outputs)
    per_sample = 2 * 8 * (20 + 20)  # float64 inputs and signals of about 20 each, in two blocks: a few samples
    b = tile_samples(model, RoutePlan(model), x, per_sample * 5)
    assert 1 <= b < 23  # the cap forces several tiles
    assert rel_err(empirical_ntk(model, x, outputs=outputs, memory_cap=per_sample * 5), K) <= 1e-10
    parts = [empirical_ntk(model, x, outputs=outputs, block_size=4, share=(r, 3, lambda t: t)) for r in range(3)]
    assert all(float(p.abs().sum()) > 0 for p in parts)  # every rank had tiles (21 pairs of 6 blocks over 3)
    assert (parts[0] != 0).logical_and(parts[1] != 0).sum() == 0  # no tile twice
    assert rel_err(parts[0] + parts[1] + parts[2], K) <= 1e-10


def test_reduce_fn_applies_to_layer_routes_once():
    torch.manual_seed(6)
    calls = []

    def double(K):
        calls.append(K.shape)
        return 2 * K

    model, x = our_model("fc", "ntk", bias=True)
    K = empirical_ntk(model, x, block_size=4)
    assert torch.allclose(empirical_ntk(model, x, block_size=4, reduce_fn=double), 2 * K, rtol=1e-14)
    assert calls == [(N, N)]
    # The fallback (here the bare `scale`) is added after the reduction.
    m2 = SharedAndPositions().double()
    x2 = torch.randn(N, 20, dtype=torch.float64)
    K_all = empirical_ntk(m2, x2)
    K_2 = empirical_ntk(m2, x2, reduce_fn=double)
    m2.scale.requires_grad_(False)
    K_layers = empirical_ntk(m2, x2)
    assert torch.allclose(K_2 - K_all, K_layers, rtol=1e-12, atol=1e-12)


def test_float32_model():
    model, x = our_model("fc", "ntk", bias=True)
    ref = reference_ntk(model, x, "trace")
    K = empirical_ntk(model.float(), x.float())
    assert K.dtype == torch.float64
    assert rel_err(K, ref) <= 1e-5


def test_no_side_effects():
    model, x = our_model("cnn", "mup", bias=True)
    model.hidden[0].weight.grad = torch.full_like(model.hidden[0].weight, 0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for m in model.modules()]
    modes = [m.training for m in model.modules()]
    for outputs in ("trace", "full"):
        empirical_ntk(model, x, outputs=outputs, block_size=4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for name, p in model.named_parameters():
        if name == "hidden.0.weight":
            assert torch.equal(p.grad, torch.full_like(p, 0.25))
        else:
            assert p.grad is None, name
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                     for m in model.modules()]
    assert modes == [m.training for m in model.modules()]


def test_nothing_trainable_gives_zeros():
    model, x = our_model("fc", "ntk", bias=False)
    model.requires_grad_(False)
    K = empirical_ntk(model, x, outputs="full")
    assert K.shape == (N * C, N * C) and not K.any()
