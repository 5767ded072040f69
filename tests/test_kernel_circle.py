"""metrics.kernel_circle: the NTK row along a circle of inputs (Jacot, Gabriel & Hongler 2018, Figure 1). The row
against an independent torch.func Jacobian computation, at init against K_inf for a wide net, written by a trial
(and the same init row after a resume), and read back for the sweep's panel and verdict numbers. No Ray."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.func import functional_call, jacrev

from overparam_dist import run_trial
from overparam_dist.analysis.kernel_circle import INIT_GAP_CIRCLE, REL_CIRCLE_MOVE, circle_panel, circle_table
from overparam_dist.analysis.results import SweepResults, Trial
from overparam_dist.config import ConfigError, load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics.kernel_circle import KernelCircle, circle_inputs, kernel_scale
from overparam_dist.metrics.tracker import trial_ntk
from overparam_dist.models import build_model
from overparam_dist.rundir import KERNEL_CIRCLE_FILE


def _setup(*overrides: str):
    cfg = load_config(None, ["data.dim=4", "data.n=8", "train.dtype=float64", *overrides])
    ds = build_dataset(cfg)
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    return cfg, ds, model


def _jacobian_row(model, x0: torch.Tensor, circle: torch.Tensor) -> torch.Tensor:
    """sum_c <df_c(x_0)/dtheta, df_c(x)/dtheta> for each circle point x, from torch.func Jacobians of the
    flattened trainable parameters: a route that shares nothing with the layer-wise NTK code."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
    flat = torch.cat([p.detach().reshape(-1) for n, p in model.named_parameters() if p.requires_grad])

    def f(theta, x):
        params, i = {}, 0
        for n, s in zip(names, shapes):
            params[n] = theta[i:i + math.prod(s)].view(s)
            i += math.prod(s)
        return functional_call(model, params, (x[None],))[0]  # (C,)

    j0 = jacrev(f)(flat, x0)  # (C, P)
    return torch.stack([(j0 * jacrev(f)(flat, x)).sum() for x in circle])


def test_the_circle_lies_at_the_norm_of_x0_in_the_plane_of_x0_and_x1():
    x = torch.randn(5, 6, dtype=torch.float64) * 3
    gamma, circle = circle_inputs(x, 12)
    assert gamma[6] == 0 and torch.equal(circle[6], x[0]) and gamma[0] == -math.pi and gamma[-1] < math.pi
    torch.testing.assert_close(circle.norm(dim=1), x[0].norm().expand(12), rtol=1e-12, atol=0)
    basis = torch.linalg.qr(x[:2].T).Q  # every circle point is a combination of x_0 and x_1
    torch.testing.assert_close(circle.T, basis @ (basis.T @ circle.T), rtol=0, atol=1e-12)
    cos = circle @ x[0] / x[0].norm() ** 2
    torch.testing.assert_close(cos, torch.cos(gamma), rtol=0, atol=1e-12)
    g_odd, _ = circle_inputs(x, 7)  # an odd count keeps gamma = 0 at index N // 2
    assert g_odd[3] == 0


@pytest.mark.parametrize("param", ["ntk", "paper"])
def test_row_equals_an_independent_jacobian_computation(param):
    cfg, ds, model = _setup(f"model.param={param}", "model.depth=2", "model.width=16", "metrics.kernel_circle=10")
    kc = KernelCircle(model, ds.x.double(), cfg, ds.num_outputs)
    want = _jacobian_row(model, kc.circle[5], kc.circle) * kernel_scale(cfg)
    assert kernel_scale(cfg) == (1 / 16 if param == "paper" else 1.0)
    assert (kc.init - want).abs().max() <= 1e-10 * want.abs().max(), (kc.init, want)
    assert kc.inf is not None and kc.inf.shape == (10,)


def test_wide_net_at_init_is_close_to_k_inf_along_the_circle():
    """Width 4096, depth 2, ntk, four seeds: measured mean-row gap 0.014 (L2) and 0.013 (max pointwise, relative to
    max K_inf); single seeds 0.02-0.08. Bound 0.05, over 3x the measured mean."""
    rows, inf = [], None
    for seed in range(4):
        cfg, ds, model = _setup("model.param=ntk", "model.depth=2", "model.width=4096", "metrics.kernel_circle=32",
                                f"seed={seed}")
        kc = KernelCircle(model, ds.x.double(), cfg, ds.num_outputs)
        rows.append(kc.init)
        inf = kc.inf
    mean = torch.stack(rows).mean(0)
    assert float((mean - inf).norm() / inf.norm()) < 0.05
    assert float((mean - inf).abs().max() / inf.abs().max()) < 0.05


def test_kernel_circle_is_validated():
    with pytest.raises(ConfigError, match="config key 'metrics.kernel_circle' = -1: must be >= 0"):
        load_config(None, ["metrics.kernel_circle=-1"])
    assert load_config(None, []).metrics.kernel_circle == 0


def _trial_args(run_dir, steps: int) -> list[str]:
    return [f"run.dir={run_dir}", f"train.steps={steps}", "metrics.kernel_circle=16", "model.width=32", "data.n=16",
            "data.dim=4", "model.param=ntk", "train.dtype=float64", "train.stop_at_fit=false", "checkpoint.every=5",
            "metrics.every=5", "wandb.mode=disabled", "run.quiet=true"]


def test_a_trial_writes_the_circle_and_a_resume_keeps_its_init_row(tmp_path):
    cfg = load_config(None, _trial_args(tmp_path / "r", 10))
    assert run_trial(cfg)["status"] == "completed"
    data = json.loads((tmp_path / "r" / KERNEL_CIRCLE_FILE).read_text())
    assert len(data["gamma"]) == len(data["init"]) == len(data["end"]) == len(data["inf"]) == 16
    assert data["gamma"][8] == 0 and data["step_end"] == 10 and data["width"] == 32
    ds = build_dataset(cfg)  # the init model again, from the seed: its NTK diagonal at x_0
    model, _ = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
    diag = float(trial_ntk(model, ds.x[:1].double())[0, 0]) * kernel_scale(cfg)
    assert data["init"][8] == pytest.approx(diag, rel=1e-12)
    move = math.dist(data["end"], data["init"]) / math.hypot(*data["init"])
    assert move > 1e-4, move  # training moved the kernel (ntk at width 32: a few %)

    longer = load_config(None, _trial_args(tmp_path / "r", 15))  # resumes from step 10's checkpoint
    assert run_trial(longer)["status"] == "completed"
    again = json.loads((tmp_path / "r" / KERNEL_CIRCLE_FILE).read_text())
    assert again["init"] == data["init"] and again["step_end"] == 15 and again["end"] != data["end"]


def _fake_trial(tmp_path, name: str, width: int, seed: int, init, end, inf) -> Trial:
    d = tmp_path / name
    d.mkdir()
    gamma = [-math.pi + 2 * math.pi * k / len(init) for k in range(len(init))]
    (d / KERNEL_CIRCLE_FILE).write_text(json.dumps({"gamma": gamma, "init": init, "end": end, "inf": inf,
                                                    "step_end": 5, "width": width}))
    return Trial(name=name, row={"status": "completed", "model.width": width, "seed": seed}, dir=d)


def test_panel_and_verdict_numbers_from_the_files(tmp_path):
    inf = [1.0, 2.0, 1.0, 0.0]
    trials = [_fake_trial(tmp_path, "a", 16, 0, [1.0, 2.5, 1.0, 0.0], [1.0, 3.0, 1.0, 0.0], inf),
              _fake_trial(tmp_path, "b", 16, 1, [1.0, 1.5, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], inf),
              _fake_trial(tmp_path, "c", 64, 0, [1.0, 2.0, 1.0, 0.0], [1.0, 2.1, 1.0, 0.0], inf),
              _fake_trial(tmp_path, "d", 32, 0, [1.0, 2.0, 1.0, 0.0], [1.0, 2.0, 1.0, 0.0], inf),
              Trial(name="e", row={"status": "completed", "model.width": 128, "seed": 0}, dir=None)]
    res = SweepResults(dir=tmp_path, name="s", columns=[], trials=trials)
    panel = circle_panel(res)
    labels = [s.label for s in panel.series]
    assert labels == ["m=16, init", "m=16, end", "m=64, init", "m=64, end", "K∞"]  # smallest and largest width
    assert panel.series[0].y == [1.0, 2.0, 1.0, 0.0] and panel.series[1].y == [1.0, 2.0, 1.0, 0.0]  # seed means
    assert panel.series[0].meta["style"] == "--" and panel.series[1].meta["style"] == "-"
    assert panel.series[-1].meta == {"line": True, "style": ":", "color": "black"} and panel.series[-1].y == inf
    gamma = panel.series[0].x
    assert panel.series[0].meta["per_seed"] == {0: list(zip(gamma, [1.0, 2.5, 1.0, 0.0])),
                                                1: list(zip(gamma, [1.0, 1.5, 1.0, 0.0]))}
    table = {r["trial"]: r for r in circle_table(res)}
    assert set(table) == {"a", "b", "c", "d"}
    assert table["c"][REL_CIRCLE_MOVE] == pytest.approx(0.1 / math.sqrt(6))
    assert table["a"][INIT_GAP_CIRCLE] == pytest.approx(0.5 / math.sqrt(6))
    assert table["d"][REL_CIRCLE_MOVE] == 0.0
    assert circle_panel(SweepResults(dir=tmp_path, name="s", columns=[], trials=trials[-1:])) is None


@pytest.mark.slow
def test_tensor_parallel_rows_equal_the_unsharded_ones(tmp_path):
    """Every rank takes part in the end row's collective; tp=2 writes the rows tp=1 does (measured: 7e-16)."""
    from launcher.local import launch_trial

    rows = {}
    for tp in (1, 2):
        launch_trial(load_config(None, [*_trial_args(tmp_path / f"tp{tp}", 6), f"parallel.tp={tp}",
                                        "metrics.ntk_probe=8", "data.n=8"]))
        rows[tp] = json.loads((tmp_path / f"tp{tp}" / KERNEL_CIRCLE_FILE).read_text())
    for key in ("init", "end", "inf"):
        assert rows[2][key] == pytest.approx(rows[1][key], rel=1e-10, abs=1e-12), key
