"""Issue 26, item 1: hessian/* (metrics/hessian.py) against torch.func in float64: the Hessian of the trial's loss as
a function of the flattened trained-parameter vector, its Gauss-Newton part from torch.func.jacrev, and the
step-weighted Hessian P^1/2 H P^1/2 whose stability edge is 2."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import read_rows, run_cli
from torch.func import functional_call, hessian, jacrev

from overparam_dist.config import ConfigError, load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics import names
from overparam_dist.metrics.hessian import Sharpness, lanczos_top
from overparam_dist.models import build_model
from overparam_dist.objective import loss_fn as _loss_fn
from overparam_dist.objective import targets as _targets
from overparam_dist.step_size import effective_lrs
from overparam_dist.train import run_trial

QUIET = ["wandb.mode=disabled", "run.quiet=true", "checkpoint.every=0"]
SMALL = ["data.n=8", "data.dim=4", "train.dtype=float64", "train.lr=0.3", "metrics.ntk=false",
         "metrics.spectral=false", "metrics.hessian=true", "train.stop_at_fit=false"]
LR = 0.3
CASES = {
    "fc-paper": ["model.param=paper", "model.width=16", "model.depth=2"],
    "fc-ntk": ["model.param=ntk", "model.width=16", "model.depth=2", "model.bias=true"],
    "fc-standard": ["model.param=standard", "model.width=12", "model.depth=1"],
    "fc-mup": ["model.param=mup", "model.width=16", "model.depth=2", "model.bias=true"],  # per-layer steps
    "cnn": ["model.arch=cnn", "model.param=ntk", "model.width=6", "model.depth=1"],
    "resnet": ["model.arch=resnet", "model.param=ntk", "model.width=12", "model.depth=2"],
    "fc-ce": ["model.param=ntk", "model.width=12", "model.depth=1", "train.loss=ce", "data.target=labels"],
    "fc-sgd": ["model.param=ntk", "model.width=12", "model.depth=1", "train.batch_size=4"],  # still the whole set
}


def _setup(over):
    cfg = load_config(None, [*SMALL, *over])
    ds = build_dataset(cfg)
    model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    t = _targets(ds, cfg)
    return cfg, ds, model, rules, ds.x.double(), (t.double() if t.is_floating_point() else t)


def _reference(model, x, t, cfg):
    """(H, J): torch.func's Hessian of the loss and Jacobian of the outputs, over the flat trained parameters."""
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    flat0 = torch.cat([p.detach().reshape(-1) for p in trained.values()])
    sizes = [p.numel() for p in trained.values()]

    def outputs(flat):
        return functional_call(model, {n: q.view_as(p) for (n, p), q in zip(trained.items(), flat.split(sizes))}, (x,))

    loss_fn = _loss_fn(cfg)
    h = hessian(lambda flat: loss_fn(outputs(flat), t))(flat0)
    j = jacrev(outputs)(flat0).reshape(-1, flat0.numel())
    return h, j


def _gauss_newton(model, x, j, cfg):
    n = x.shape[0]
    if cfg.train.loss == "ce":
        with torch.no_grad():
            p = F.softmax(model(x), dim=1)
        h_out = torch.block_diag(*[torch.diag(q) - torch.outer(q, q) for q in p])
        return j.T @ h_out @ j / n
    return j.T @ j / n


def _expected(model, rules, x, t, cfg):
    h, j = _reference(model, x, t, cfg)
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    steps = effective_lrs(LR, rules, [n for n, _ in trained])
    root = torch.cat([torch.full((p.numel(),), math.sqrt(steps[n]), dtype=torch.float64) for n, p in trained])
    evals = torch.linalg.eigvalsh(h)
    return {names.HESSIAN_LAMBDA_MAX: float(evals[-1]),
            names.HESSIAN_EDGE_RATIO: float(torch.linalg.eigvalsh(root[:, None] * h * root[None, :])[-1]),
            names.HESSIAN_LAMBDA_MAX_GN: float(torch.linalg.eigvalsh(_gauss_newton(model, x, j, cfg))[-1])}, evals


def _perturb(model, scale, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * p.abs().mean() * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch_func_in_a_trial_and_off_init(case, tmp_path):
    """The step-0 row of a real trial (the trial's own loss, targets, steps and whole training set) against torch.func
    on the same initial model; then the same module away from init, where H has negative eigenvalues."""
    cfg, ds, model, rules, x, t = _setup(CASES[case])
    rows = []
    run_trial(load_config(None, [*SMALL, *CASES[case], *QUIET, "train.steps=2", f"run.dir={tmp_path / 'r'}"]),
              on_log=rows.append)
    want, _ = _expected(model, rules, x, t, cfg)
    assert [r["step"] for r in rows] == [0, 2] and all(names.HESSIAN_LAMBDA_MAX in r for r in rows)
    assert rows[0][names.HESSIAN_UNCONVERGED] == 0
    for key, value in want.items():
        assert rows[0][key] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, rows[0][key], value)
        print(f"{case} init {key}: rel err {abs(rows[0][key] - value) / abs(value):.1e}")

    _perturb(model, 0.5)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sharp = Sharpness(model, trained, x, t, _loss_fn(cfg), cfg.train.loss,
                      effective_lrs(LR, rules, list(trained)), ds.num_outputs)
    got = sharp.metrics()
    want, evals = _expected(model, rules, x, t, cfg)
    assert got[names.HESSIAN_UNCONVERGED] == 0
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (key, got[key], value)
        print(f"{case} off init {key}: rel err {abs(got[key] - value) / abs(value):.1e} "
              f"(lambda_min {float(evals[0]):.3g}, lambda_max {float(evals[-1]):.3g})")
    assert got == pytest.approx(sharp.metrics(), rel=1e-6)  # warm-started: the same values again
    if case == "fc-mup":  # per-layer steps: the edge ratio is not one step times lambda_max
        assert all(abs(got[names.HESSIAN_EDGE_RATIO] - s * got[names.HESSIAN_LAMBDA_MAX])
                   > 1e-3 * got[names.HESSIAN_EDGE_RATIO] for s in {LR * r.lr_scale for r in rules.values()})
    if case == "fc-paper":  # one step lr/m: the edge ratio is (lr/m) lambda_max, not lr lambda_max
        assert got[names.HESSIAN_EDGE_RATIO] == pytest.approx(LR / 16 * got[names.HESSIAN_LAMBDA_MAX], rel=1e-12)


def test_lanczos_returns_the_largest_algebraic_eigenvalue():
    """A spectrum whose largest magnitude is negative (-10): power iteration on H would return it; Lanczos on H
    returns the top one, 3, from below."""
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))[0]
    spectrum = torch.cat([torch.tensor([-10.0, -9.5, -3.0]), torch.linspace(-1, 2.5, 36, dtype=torch.float64),
                          torch.tensor([3.0])]).double()
    a = q @ torch.diag(spectrum) @ q.T
    theta, y, converged = lanczos_top(lambda v: a @ v, torch.randn(40, generator=g, dtype=torch.float64), tol=1e-8)
    assert converged and theta == pytest.approx(3.0, rel=1e-10) and theta <= 3.0 + 1e-12
    assert float((a @ y - theta * y).norm()) < 1e-6
    theta1, _, converged1 = lanczos_top(lambda v: a @ v, torch.randn(40, generator=g, dtype=torch.float64),
                                        max_iters=3)
    assert not converged1 and theta1 < 3.0  # a lower bound, flagged


def test_iteration_cap_is_flagged():
    """One Hessian-vector product cannot converge: both eigensolves (mup has per-layer steps) are flagged."""
    cfg, ds, model, rules, x, t = _setup(CASES["fc-mup"])
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    capped = Sharpness(model, trained, x, t, _loss_fn(cfg), cfg.train.loss, effective_lrs(LR, rules, list(trained)),
                       ds.num_outputs, max_iters=1)
    got = capped.metrics()
    want, _ = _expected(model, rules, x, t, cfg)
    assert got[names.HESSIAN_UNCONVERGED] == 2
    assert got[names.HESSIAN_LAMBDA_MAX] < want[names.HESSIAN_LAMBDA_MAX] * (1 - 1e-3)  # low, and said to be


def test_off_by_default_and_refused_under_tensor_parallelism():
    assert load_config().metrics.hessian is False
    with pytest.raises(ConfigError) as err:
        load_config(None, ["parallel.tp=2", "metrics.hessian=true"])
    assert "metrics.hessian" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_data_parallel_matches_one_process(tmp_path):
    """dp = 2 computes the whole training set's Hessian on every rank, and shares out the tiles of the whole set's
    NTK (metrics.ntk_probe=all; at width 512, 1 MiB holds tiles of 9 samples: 8 blocks of the 64, 36 tiles
    dealt to 2 ranks): the rows equal dp = 1's."""
    common = ["train", "--quiet", *SMALL, *CASES["fc-mup"], "train.steps=6", "metrics.every=2", "wandb.mode=disabled",
              "model.width=512", "data.n=64", "metrics.ntk=true", "metrics.ntk_probe=all", "metrics.ntk_memory_mb=1"]
    assert run_cli(*common, f"run.dir={tmp_path / 'dp1'}").returncode == 0
    res = run_cli(*common, f"run.dir={tmp_path / 'dp2'}", "parallel.dp=2")
    assert res.returncode == 0, res.stderr
    a, b = read_rows(tmp_path / "dp1"), read_rows(tmp_path / "dp2")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [0, 2, 4, 6]
    for x, y in zip(a, b):
        for key in (names.HESSIAN_LAMBDA_MAX, names.HESSIAN_EDGE_RATIO, names.HESSIAN_LAMBDA_MAX_GN,
                    names.NTK_LAMBDA_MIN, names.NTK_LAMBDA_MAX, names.NTK_TRACE):
            assert y[key] == pytest.approx(x[key], rel=1e-6), (x["step"], key)
        assert x[names.HESSIAN_UNCONVERGED] == y[names.HESSIAN_UNCONVERGED] == 0
