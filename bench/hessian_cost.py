"""What one logged row of issue 26's metrics costs, in training steps: hessian/lambda_max (Lanczos on Hessian-vector
products, metrics/hessian.py), hessian/lambda_max_gn (the exact full NTK of the training set, then eigvalsh) and
feature/* (metrics/features.py: its share of the probe forward it has in common with the ReLU flips, and alone).

FC width 1024, depth 3 (three m x m hidden layers, paper parameterization), synthetic regression data n=64,
full-batch GD, as bench/train_overhead.py's baseline. A training step is forward, loss, backward and the SGD update
of the same model. lambda_max is timed on a cold row (the fixed random start) and on a warm row (started from the
previous row's top vector after --between training steps, as on every later logged row), with the number of
Hessian-vector products each took. Every time is the best of --repeats, so that a busy machine's noise falls on
neither side of a ratio more than the other. --smoke runs it at small sizes to check it works.
Run: .venv/bin/python bench/hessian_cost.py [--smoke]
"""

import argparse
import time

import torch

from overparam_dist import precision
from overparam_dist.config import load_config, probe_samples
from overparam_dist.data import build_dataset
from overparam_dist.metrics.features import feature_movement
from overparam_dist.metrics.hessian import LossHvp, Sharpness, gauss_newton_top
from overparam_dist.metrics.tracker import ActivationPattern
from overparam_dist.models import build_model
from overparam_dist.step_size import effective_lrs, resolve_lr
from overparam_dist.train import _loss_fn, _targets

p = argparse.ArgumentParser()
p.add_argument("--width", type=int, default=1024)
p.add_argument("--depth", type=int, default=3)
p.add_argument("--n", type=int, default=64)
p.add_argument("--steps", type=int, default=20, help="training steps timed (the fastest is the unit)")
p.add_argument("--repeats", type=int, default=5, help="each row timed this many times, from the same start")
p.add_argument("--between", type=int, default=10, help="training steps between the cold and the warm row")
p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
p.add_argument("--smoke", action="store_true", help="width 64, depth 2, n 16, one thread: a quick check that it runs")
args = p.parse_args()
if args.smoke:  # one thread: on a busy machine two threads of a tiny model spend their time waiting for each other
    args.width, args.depth, args.n, args.steps, args.between, args.repeats, args.threads = 64, 2, 16, 5, 3, 3, 1
if args.threads > 0:
    torch.set_num_threads(args.threads)

cfg = load_config(None, [f"model.width={args.width}", f"model.depth={args.depth}", f"data.n={args.n}",
                         "data.target=regression", "metrics.hessian=true"])
ds = build_dataset(cfg)
model, rules = build_model(cfg, ds.input_shape, ds.num_outputs)
x, t, loss_fn = ds.x, _targets(ds, cfg), _loss_fn(cfg)
trained = {n: q for n, q in model.named_parameters() if q.requires_grad}
with precision.exact():
    base, _, _ = resolve_lr(cfg, model, rules, x, ds.num_outputs)
steps = effective_lrs(base, rules, list(trained))
opt = torch.optim.SGD([{"params": [q], "lr": steps[n]} for n, q in trained.items()])


def train_step() -> float:
    start = time.perf_counter()
    loss = loss_fn(model(x), t)
    opt.zero_grad()
    loss.backward()
    opt.step()
    float(loss.detach())
    return time.perf_counter() - start


def lambda_max_row(sharp: Sharpness) -> tuple[float, int, float, bool]:
    """(seconds, Hessian-vector products, lambda_max, converged) of one row's hessian/lambda_max: the best of
    --repeats, each from the same start vector, which the last one then advances as a row does."""
    before = sharp.vectors["raw"]
    best = None
    for _ in range(args.repeats):
        sharp.vectors["raw"] = before
        calls = [0]
        start = time.perf_counter()
        hvp = LossHvp(model, sharp.params, x, t, loss_fn)

        def counted(v):
            calls[0] += 1
            return hvp(v)

        lam, converged = sharp._top("raw", counted)
        run = (time.perf_counter() - start, calls[0], lam, converged)
        best = run if best is None or run[0] < best[0] else best
    return best


acts = ActivationPattern(model)
probe = x[:probe_samples(cfg, len(x))]
h0 = acts.preactivations(model, probe)


def best_of(fn) -> float:
    out = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return min(out)


with precision.exact():
    train_step()  # warm-up
    unit = min(train_step() for _ in range(args.steps))
    sharp = Sharpness(model, trained, x, t, loss_fn, cfg.train.loss, steps, ds.num_outputs)
    cold = lambda_max_row(sharp)
    t_gn = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        gn = gauss_newton_top(model, x, cfg.train.loss)
        t_gn.append(time.perf_counter() - start)
    t_gn = min(t_gn)
    for _ in range(args.between):
        train_step()
    warm = lambda_max_row(sharp)
    now = acts.preactivations(model, probe)
    t_forward = best_of(lambda: acts.preactivations(model, probe))  # shared with drift/act_flip
    t_features = best_of(lambda: feature_movement(h0, now, list(h0)))

params = sum(q.numel() for q in trained.values())
print(f"FC width {args.width}, depth {args.depth}, n={args.n} full batch, {params} trained parameters, "
      f"{torch.get_num_threads()} threads")
print(f"training step (best of {args.steps}): {unit * 1e3:.2f} ms; rows best of {args.repeats}")
for label, (sec, hvps, lam, ok) in [("hessian/lambda_max, cold row", cold),
                                    (f"hessian/lambda_max, warm row ({args.between} steps later)", warm)]:
    print(f"{label:48s} {sec * 1e3:9.1f} ms = {sec / unit:7.1f} training steps ({hvps} HVPs, "
          f"{sec / hvps / unit:.2f} steps each; lambda_max {lam:.4g}{'' if ok else ', UNCONVERGED'})")
print(f"{'hessian/lambda_max_gn (exact NTK, eigvalsh)':48s} {t_gn * 1e3:9.1f} ms = {t_gn / unit:7.1f} training steps "
      f"(lambda_max_gn {gn:.4g})")
print(f"{'feature/* alone (the probe forward is shared)':48s} {t_features * 1e3:9.1f} ms = "
      f"{t_features / unit:7.2f} training steps; the shared probe forward {t_forward / unit:.2f} steps")
