"""Theory metrics against independent computations (float64, torch.linalg, torch.func, closed forms)."""

import math

import pytest
import torch
from conftest import read_rows

from overparam_dist.config import load_config
from overparam_dist.metrics import names
from overparam_dist.metrics import tracker as tracker_mod
from overparam_dist.metrics.analytic import infinite_width_ntk
from overparam_dist.metrics.convergence import ConvergenceTracker, log_loss_slope
from overparam_dist.metrics.drift import WeightDrift
from overparam_dist.metrics.tracker import TheoryMetrics
from overparam_dist.models import build_model
from overparam_dist.models.init import generate_full
from overparam_dist.train import run_trial


def _model(*overrides, dtype=torch.float64):
    cfg = load_config(None, ["data.dim=8", "data.classes=3", *overrides])
    model, rules = build_model(cfg, (8,), 3, dtype=dtype)
    return cfg, model, rules


def _init_values(model, rules, seed):
    return {n: generate_full(rules[n], seed, n, p.shape).to(p.dtype) for n, p in model.named_parameters()}


def _perturb(model, scale=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                u = torch.randn(p.shape[0], 3, generator=g, dtype=p.dtype)
                v = torch.randn(3, p[0].numel(), generator=g, dtype=p.dtype)
                noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
                p.add_(scale * (u @ v).reshape(p.shape) + scale * 0.3 * noise)


@pytest.mark.parametrize("w0", ["regenerated", "cached"])
@pytest.mark.parametrize("width", [50, 1500])  # 1500 crosses the 1024 tile boundary
def test_weight_drift_frobenius_and_spectral_match_linalg(width, w0):
    cfg, model, rules = _model(f"model.width={width}", "model.param=paper", "model.train_outer=true", "seed=5")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    drift = WeightDrift(trained, rules, cfg.seed, cache_bytes=0 if w0 == "regenerated" else 2**40)
    assert bool(drift.w0) == (w0 == "cached")
    _perturb(model)
    first = drift.compute()  # routine: a few warm-startable iterations
    got = drift.compute(precise=True)  # as for the final row
    init = _init_values(model, rules, cfg.seed)
    num = sum(float((p.detach() - init[n]).pow(2).sum()) for n, p in trained.items())
    den = sum(float(init[n].pow(2).sum()) for n in trained)
    assert got[names.DRIFT_WEIGHT_REL] == pytest.approx(math.sqrt(num / den), rel=1e-10)
    for n, p in trained.items():
        layer = n.rsplit(".", 1)[0]
        d = (p - init[n]).reshape(p.shape[0], -1)
        assert got[names.drift_weight_rel(layer)] == pytest.approx(float(d.norm() / init[n].norm()), rel=1e-10)
        sigma = float(torch.linalg.matrix_norm(d, ord=2))
        assert got[names.drift_weight_spec(layer)] == pytest.approx(sigma, rel=1e-4), layer
        assert first[names.drift_weight_spec(layer)] <= sigma * (1 + 1e-9)  # power iteration never overshoots
        if n.endswith("weight"):  # per-unit distance: the largest row norm of W_t - W_0
            assert got[names.drift_neuron_max(layer)] == pytest.approx(float(d.norm(dim=1).max()), rel=1e-10)
    assert got[names.DRIFT_NEURON_MAX] == max(got[names.drift_neuron_max(n.rsplit(".", 1)[0])]
                                              for n in trained if n.endswith("weight") and n != "output.weight")


@pytest.mark.parametrize("w0", ["regenerated", "cached"])
def test_spectral_norm_of_noise_like_drift_is_within_the_tolerance(w0):
    """A flat spectrum (i.i.d. noise drift) is the slow case for power iteration: every routine row must still be
    within 1e-3 of torch.linalg's sigma_1, and a row cut short by the cap must say so."""
    cfg, model, rules = _model("model.width=600", "model.param=paper", "seed=3")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    drift = WeightDrift(trained, rules, cfg.seed, cache_bytes=0 if w0 == "regenerated" else 2**40)
    init = _init_values(model, rules, cfg.seed)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in trained.values():
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    got = drift.compute()
    assert got[names.DRIFT_SPEC_UNCONVERGED] == 0
    for n, p in trained.items():
        sigma = float(torch.linalg.matrix_norm(p.detach() - init[n], ord=2))
        assert sigma * (1 - 1e-3) <= got[names.drift_weight_spec(n.rsplit(".", 1)[0])] <= sigma * (1 + 1e-9), n
    capped = WeightDrift(trained, rules, cfg.seed, max_iters=3, cache_bytes=0 if w0 == "regenerated" else 2**40)
    capped.w0 = {n: init[n] for n in trained}
    assert capped.compute()[names.DRIFT_SPEC_UNCONVERGED] == len(trained)  # flagged, not silently low


def test_float32_model_drift_is_exact_in_regenerated_w0():
    cfg, model, rules = _model("model.width=300", dtype=torch.float32)
    drift = WeightDrift({n: p for n, p in model.named_parameters() if p.requires_grad}, rules, cfg.seed,
                        cache_bytes=0)
    assert drift.compute()[names.DRIFT_WEIGHT_REL] == 0.0  # W_0 regenerates bit-identically


def _jac_ntk(model, x, full=False):
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}

    def f(ps, xi):
        return torch.func.functional_call(model, {**ps, **frozen}, (xi[None],))[0]

    jac = torch.func.vmap(torch.func.jacrev(f), (None, 0))(params, x)
    if full:
        n, c = x.shape[0], next(iter(jac.values())).shape[1]
        return sum(torch.einsum("iap,jbp->iajb", j.flatten(2), j.flatten(2)) for j in jac.values()).reshape(n * c, -1)
    return sum(torch.einsum("iap,jap->ij", j.flatten(2), j.flatten(2)) for j in jac.values())


@pytest.mark.parametrize("param", ["paper", "ntk", "standard"])
def test_tracker_metrics_equal_independent_computation(param):
    cfg, model, rules = _model(f"model.param={param}", "model.width=40", "model.depth=2", "seed=2")
    x = torch.nn.functional.normalize(torch.randn(10, 8, dtype=torch.float64), dim=1)
    y = torch.randn(10, 3, dtype=torch.float64)
    tm = TheoryMetrics(model, rules, cfg.seed, x, y, param=param, width=40, depth=2, arch="fc", bias=False,
                       train_outer=param != "paper", classes=3, track_ntk=True)
    scale = 1 / 40 if param == "paper" else 1.0
    k0 = _jac_ntk(model, x) * scale
    theta0 = _jac_ntk(model, x, full=True) * scale  # (nC x nC), index i*C + c
    pre0 = _preacts(model, x)
    _perturb(model, 0.05)
    got = tm.compute(first=True)
    k = _jac_ntk(model, x) * scale
    ev = torch.linalg.eigvalsh(k)
    assert got[names.NTK_REL_DRIFT] == pytest.approx(float((k - k0).norm() / k0.norm()), rel=1e-8)
    assert got[names.NTK_LAMBDA_MIN] == pytest.approx(float(ev[0]), rel=1e-8)
    assert got[names.NTK_LAMBDA_MAX] == pytest.approx(float(ev[-1]), rel=1e-8)
    assert got[names.NTK_TRACE] == pytest.approx(float(k.trace()), rel=1e-8)
    # Label complexity from Theta_0 over all nC outputs, once (Arora et al. 2019 with C outputs).
    vec = y.reshape(-1)
    lc = math.sqrt(2 * float(vec @ torch.linalg.solve(theta0, vec)) / 10)
    assert got[names.NTK_LABEL_COMPLEXITY] == pytest.approx(lc, rel=1e-6)
    assert names.NTK_LABEL_COMPLEXITY not in tm.compute(first=False)
    if param in ("paper", "ntk"):
        k_inf = infinite_width_ntk(x, 2, param, classes=3)
        theta_inf = torch.kron(k_inf / 3, torch.eye(3, dtype=torch.float64))  # independent outputs
        lc_inf = math.sqrt(2 * float(vec @ torch.linalg.solve(theta_inf, vec)) / 10)
        assert got[names.NTK_LABEL_COMPLEXITY_INF] == pytest.approx(lc_inf, rel=1e-9)
        assert got[names.NTK_INIT_GAP] == pytest.approx(float((k0 - k_inf).norm() / k_inf.norm()), rel=1e-8)
    else:
        assert names.NTK_INIT_GAP not in got
    pre = _preacts(model, x)
    flips = [(a > 0) != (b > 0) for a, b in zip(pre0, pre)]
    for layer, f in zip(["input", "hidden.0", "hidden.1"], flips):
        assert got[names.drift_act_flip(layer)] == pytest.approx(float(f.double().mean()), abs=0)
    # The aggregate counts the units of trained layers only: paper's A is frozen and can never flip.
    trained = flips[1:] if param == "paper" else flips
    assert got[names.DRIFT_ACT_FLIP] == pytest.approx(float(torch.cat([f.flatten() for f in trained]).double().mean()))
    if param == "paper":
        assert got[names.drift_act_flip("input")] == 0.0 and got[names.DRIFT_ACT_FLIP] > 0


def test_label_complexity_is_larger_for_random_labels_on_digits():
    """Arora et al. 2019's point on real 10-class data (scikit-learn digits, n = 200): the kernel finds true labels
    easier than random ones. Full Theta_0 over all 10 outputs (2000 x 2000), and K_inf."""
    values = {}
    for noise in (0.0, 1.0):
        cfg = load_config(None, ["data.name=digits", "data.n=200", "model.width=256", "model.depth=2",
                                 f"data.label_noise={noise}", "metrics.ntk_probe=200"])
        from overparam_dist.data import build_dataset
        from overparam_dist.metrics.label_complexity import targets

        ds = build_dataset(cfg)
        model, rules = build_model(cfg, ds.input_shape, ds.num_outputs, dtype=torch.float64)
        x = ds.x.double()
        tm = TheoryMetrics(model, rules, cfg.seed, x, targets(ds.y, True, 10), param="paper", width=256, depth=2,
                           arch="fc", bias=False, train_outer=False, classes=10, track_ntk=True, spectral=False)
        values[noise] = tm.once
    for key in (names.NTK_LABEL_COMPLEXITY, names.NTK_LABEL_COMPLEXITY_INF):
        assert values[1.0][key] > 1.2 * values[0.0][key], (key, values)
    print("label complexity on digits (true, random labels):", values)


def _preacts(model, x):
    out, h = [], x
    for layer in [model.input, *model.hidden]:
        z = layer(h)
        out.append(z.detach().clone())
        h = torch.relu(z)
    return out


def test_convergence_rate_and_steps_to_fit_closed_form():
    steps = list(range(100))
    assert log_loss_slope(steps, [3.0 * math.exp(-0.07 * s) for s in steps]) == pytest.approx(-0.07, rel=1e-9)
    tracker = ConvergenceTracker(window=20)
    for s in steps:
        tracker.update(s, 2.0 * math.exp(-0.05 * s) if s < 80 else 2.0 * math.exp(-4 - 0.2 * (s - 80)), s >= 37)
    assert tracker.rate() == pytest.approx(-0.2, rel=1e-9)  # only the trailing window counts
    assert tracker.steps_to_fit == 37

    sgd = ConvergenceTracker(window=20)  # mini-batch SGD: a point only every 5 steps; the window is still 20 steps
    for s in range(0, 100, 5):
        sgd.update(s, 2.0 * math.exp(-0.05 * s) if s < 80 else 2.0 * math.exp(-4 - 0.2 * (s - 80)), s >= 37)
    assert [s for s, _ in sgd.window] == [80, 85, 90, 95]
    assert sgd.rate() == pytest.approx(-0.2, rel=1e-9) and sgd.steps_to_fit == 40


def _loglog_slope(xs, ys):
    lx, ly = [math.log(v) for v in xs], [math.log(v) for v in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


@pytest.mark.slow
def test_drift_shrinks_with_width_like_the_theory(tmp_path):
    """Synthetic n=32, depth 2, 50 GD steps, param=paper, widths 64..2048, mean over 5 seeds.

    Theory (Allen-Zhu et al.; Jacot et al.): ||W_t - W_0||_F and ||W_t - W_0||_2 are O(1/sqrt(m)) and so is
    the relative NTK change. ||W_0||_F grows like sqrt(m) (entries N(0, 2/m), m^2 of them), so the
    *relative* Frobenius drift falls like 1/m: slope -1, not -1/2.
    """
    widths = [64, 128, 256, 512, 1024, 2048]
    seeds = [0, 1, 2, 3, 4]
    keys = (names.DRIFT_WEIGHT_ABS, names.DRIFT_WEIGHT_REL, names.drift_weight_spec("hidden.0"),
            names.drift_weight_spec("hidden.1"), names.NTK_REL_DRIFT)
    finals = {}
    for w in widths:
        rows = []
        for seed in seeds:
            run = tmp_path / f"w{w}s{seed}"
            cfg = load_config(None, [f"model.width={w}", "model.depth=2", "data.n=32", "train.steps=50", "train.lr=8",
                                     "train.stop_at_fit=false", "metrics.every=50", "checkpoint.every=0",
                                     f"seed={seed}", f"run.dir={run}", "wandb.mode=disabled", "run.quiet=true"])
            summary = run_trial(cfg)
            assert summary["status"] == "completed" and summary["steps"] == 50
            rows.append(read_rows(run)[-1])
        finals[w] = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    slopes = {k: _loglog_slope(widths, [finals[w][k] for w in widths]) for k in keys}
    print(f"\nfitted log-log slopes against width {widths} (mean of {len(seeds)} seeds):")
    for k in keys:
        print(f"  {k:28s} {slopes[k]:+.3f}   " + " ".join(f"{finals[w][k]:.4g}" for w in widths))
    for k in keys[:4]:
        vals = [finals[w][k] for w in widths]
        assert all(b < a for a, b in zip(vals, vals[1:])), (k, vals)
    assert finals[widths[-1]][names.NTK_REL_DRIFT] < finals[widths[0]][names.NTK_REL_DRIFT] / 3
    assert -0.65 <= slopes[names.DRIFT_WEIGHT_ABS] <= -0.35
    assert -0.65 <= slopes[names.drift_weight_spec("hidden.0")] <= -0.35
    assert -0.65 <= slopes[names.NTK_REL_DRIFT] <= -0.35
    assert -1.15 <= slopes[names.DRIFT_WEIGHT_REL] <= -0.85


def test_activation_metrics_in_chunks_equal_one_forward(monkeypatch):
    """A probe set larger than tracker.PROBE_CHUNK is taken in chunks: flips and feature movement add up to the
    values of one forward over all of it (here chunks of 3 of 10 samples, against the NTK's own forward)."""


    cfg, model, rules = _model("model.param=ntk", "model.width=24", "model.depth=2", "seed=4")
    x = torch.nn.functional.normalize(torch.randn(10, 8, dtype=torch.float64), dim=1)
    tm = TheoryMetrics(model, rules, cfg.seed, x, None, param="ntk", width=24, depth=2, arch="fc", bias=False,
                       train_outer=True, classes=3, track_ntk=True, spectral=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    whole = tm.compute(first=False)  # the ReLU inputs recorded from the NTK's capture forward
    monkeypatch.setattr(tracker_mod, "PROBE_CHUNK", 3)
    chunked = tm._activation_metrics()
    keys = [k for k in chunked if k.startswith(("drift/act_flip", "feature/"))]
    assert len(keys) >= 10 and whole[names.DRIFT_ACT_FLIP] > 0
    for k in keys:
        assert chunked[k] == pytest.approx(whole[k], rel=1e-12, abs=1e-15), k


@pytest.mark.parametrize("dtype, extra", [("float32", []), ("float64", ["model.param=ntk", "model.bias=true"]),
                                          ("float64", ["data.classes=1"]),
                                          ("float32", ["metrics.ntk=false"])])  # the ReLU inputs alone
def test_the_training_forward_is_the_probe_kernels_capture(tmp_path, monkeypatch, dtype, extra):
    """On a logged full-batch step whose batch is the probe set, the NTK's capture (and the ReLU inputs of the flips
    and feature metrics) come from the training step's own forward (TheoryMetrics.watching), and the kernel's signals
    from its backward (ntk_capture.capture_from_backward): C - 1 backwards of its own. The first row (as K_0 did)
    and the last (no backward follows it) take the kernel's own. Every row equals the rows of the kernel's own
    capture: bit for bit but for ntk/*, which agree to rounding (1e-6 in float32, 1e-12 in float64)."""
    args = ["model.width=128", "model.depth=2", "data.n=32", "data.target=regression", "train.steps=20",
            "metrics.every=5", "wandb.mode=disabled", "run.quiet=true", f"train.dtype={dtype}", *extra]
    taken, recovered = [], []
    take, recover = TheoryMetrics.take, tracker_mod.capture_from_backward

    def counted(self, f):
        take(self, f)
        taken.append(self.taken is not None and (self.taken[0] is not None) == self.track_ntk and bool(self.taken[1]))

    def recovered_counted(rec, f):
        cap = recover(rec, f)
        recovered.append(cap is not None)
        return cap

    monkeypatch.setattr(TheoryMetrics, "take", counted)
    monkeypatch.setattr(tracker_mod, "capture_from_backward", recovered_counted)
    run_trial(load_config(None, [*args, f"run.dir={tmp_path / 'watched'}"]))
    assert taken == ["metrics.ntk=false" in extra] + [True] * 4  # steps 0 (its kernel: its own), 5, 10, 15, 20
    assert recovered == ([True] * 3 + [False] if "metrics.ntk=false" not in extra else [])  # 5, 10, 15; 20 stops
    monkeypatch.setattr(TheoryMetrics, "can_watch", lambda self, x: False)
    run_trial(load_config(None, [*args, f"run.dir={tmp_path / 'own'}"]))
    assert len(taken) == 5
    watched, own = read_rows(tmp_path / "watched"), read_rows(tmp_path / "own")
    assert len(watched) == len(own) == 5 and "feature/delta_rel" in watched[-1]
    assert ("ntk/rel_drift" in watched[-1]) == ("metrics.ntk=false" not in extra)
    tol = 1e-6 if dtype == "float32" else 1e-12
    for w, o in zip(watched, own):
        assert w.keys() == o.keys()
        for k in w:
            if k.startswith("ntk/"):
                assert w[k] == pytest.approx(o[k], rel=tol, abs=tol), k
            elif not k.startswith("time/"):
                assert w[k] == o[k], k


def test_w0_is_kept_exactly_when_its_copy_and_a_d_buffer_fit_the_budget(monkeypatch):
    """The exact copy of W_0 and the buffer of D (one, the size of the largest weight) are kept when both fit in the
    budget (a quarter of the memory the trial leaves free, footprint.w0_cache_budget), else W_0 is regenerated; the
    drift is the same either way."""
    from overparam_dist import footprint

    monkeypatch.delenv("OVERPARAM_W0_CACHE_BYTES", raising=False)
    cfg, model, rules = _model("model.width=48", "model.depth=2")
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    size = sum(p.numel() * p.element_size() for p in trained.values())
    size += max(p.numel() * p.element_size() for p in trained.values())
    kept = WeightDrift(trained, rules, cfg.seed, cache_bytes=size)
    regenerated = WeightDrift(trained, rules, cfg.seed, cache_bytes=size - 1)
    assert set(kept.w0) == set(trained) and regenerated.w0 == {}
    with torch.no_grad():
        for p in trained.values():
            p.add_(0.01 * torch.randn_like(p))
    a, b = kept.compute(precise=True), regenerated.compute(precise=True)
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-12, abs=1e-15) for k in a)
    have, _ = footprint.available_bytes(cfg)
    assert abs(footprint.w0_cache_budget(cfg) - (have - footprint.bytes_per_rank(cfg)) // 4) < 2**22  # meminfo moves
