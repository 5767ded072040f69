"""metrics/ntk_capture.capture_from_backward: the probe kernel's signals recovered from a training step's backward
(C - 1 backwards of its own instead of C), against the torch.func Jacobian-contraction NTK in float64, and the rows it
refuses (a sample whose dL/df is zero), which then take the kernel's own capture."""

from __future__ import annotations

import pytest
import torch
from test_ntk_exact import our_model, reference_ntk, rel_err

from overparam_dist.metrics.ntk import empirical_ntk
from overparam_dist.metrics.ntk_capture import capture_from_backward, capturing
from overparam_dist.metrics.ntk_plan import RoutePlan


def _from_training_backward(model, x, targets, keep_graph=True):
    """A training step's forward watched by the capture, its loss's backward, then the capture from it."""
    plan = RoutePlan(model)
    with capturing(model, plan, x.shape[0]) as rec:
        f = model(x)
    f.retain_grad()
    loss = 0.5 * (f - targets).pow(2).sum(1).mean()
    loss.backward(retain_graph=keep_graph)
    return plan, capture_from_backward(rec, f)


@pytest.mark.parametrize("arch, param, bias", [("fc", "paper", False), ("fc", "ntk", True), ("cnn", "mup", True),
                                               ("resnet", "standard", False)])
def test_the_kernel_from_a_training_backward_is_exact(arch, param, bias):
    """C = 3 outputs whose dL/df differ by 10^6 within a sample (the recovered output is each sample's largest):
    the trace and the full kernel equal the reference to 1e-12."""
    model, x = our_model(arch, param, bias)
    with torch.no_grad():
        f0 = model(x)
    scale = torch.tensor([1.0, 1e-6, 3.0], dtype=torch.float64)
    targets = f0 - torch.randn(f0.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * scale
    plan, cap = _from_training_backward(model, x, targets)
    assert cap is not None and cap.C == 3
    for outputs in ("trace", "full"):
        K = empirical_ntk(model, x, outputs=outputs, captured=(plan, cap))
        assert rel_err(K, reference_ntk(model, x, outputs)) <= 1e-12, outputs


def test_one_output_needs_no_backward_of_its_own(monkeypatch):
    """C = 1: the signals are the training backward's divided by dL/df, with no autograd.grad call."""
    model, x = our_model("fc", "ntk", True)
    model.output = torch.nn.Linear(32, 1, bias=False).double()
    with torch.no_grad():
        f0 = model(x)
    grads = []
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grads.append(1))
    plan, cap = _from_training_backward(model, x, f0 + 0.5, keep_graph=False)
    monkeypatch.undo()
    assert cap is not None and grads == []
    assert rel_err(empirical_ntk(model, x, captured=(plan, cap)), reference_ntk(model, x, "trace")) <= 1e-12


def test_float32_signals_agree_to_rounding():
    model, x = our_model("fc", "ntk", True)
    ref = reference_ntk(model, x, "trace")
    model, x = model.float(), x.float()
    with torch.no_grad():
        f0 = model(x)
    plan, cap = _from_training_backward(model, x, f0 - 1.0)
    assert rel_err(empirical_ntk(model, x, captured=(plan, cap)), ref) <= 1e-5


@pytest.mark.parametrize("gap", [0.0, 1e-200])
def test_a_sample_with_no_usable_loss_gradient_gives_none(gap):
    """A sample fit exactly (dL/df = 0), or whose largest |dL/df| is below sqrt(tiny): nothing to divide by."""
    model, x = our_model("fc", "ntk", True)
    with torch.no_grad():
        f0 = model(x)
    targets = f0 - 1.0
    targets[2] = f0[2] - gap
    assert _from_training_backward(model, x, targets)[1] is None


def test_no_backward_gives_none():
    model, x = our_model("fc", "ntk", True)
    plan = RoutePlan(model)
    with capturing(model, plan, x.shape[0]) as rec:
        f = model(x)
    f.retain_grad()
    assert capture_from_backward(rec, f) is None
