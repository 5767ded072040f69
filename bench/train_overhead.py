"""Throughput of run_trial against a bare PyTorch loop training the same net in the same process.

Four settings: metrics off; every 10 steps the cheap metrics (train/*, drift Frobenius norms,
activation flips, feature movement); every 10 steps everything (adds the exact NTK and spectral norms of W_t - W_0);
everything on every step.

FC width 1024, depth 3 (three m x m hidden layers), synthetic regression data n=64, full-batch GD,
200 steps. Prints samples/s of each and the ratio run_trial / bare (issue 27's targets: all theory metrics
>= 0.90 every 10 steps, >= 0.5 every step); with --parts, then the milliseconds per logged row of each part (the
drift, the kernel's own backwards, its Grams, the flips and features, the whole row), timed in the loop.
Run: .venv/bin/python bench/train_overhead.py [--parts]
"""

import argparse
import tempfile
import time

import torch

from overparam_dist.config import load_config
from overparam_dist.data import build_dataset
from overparam_dist.train import run_trial

p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=200)
p.add_argument("--width", type=int, default=1024)
p.add_argument("--repeats", type=int, default=5)
p.add_argument("--parts", action="store_true", help="then the per-row time of each part of a logged row")
args = p.parse_args()
torch.set_num_threads(torch.get_num_threads())

COMMON = [f"model.width={args.width}", "model.depth=3", "data.target=regression", f"train.steps={args.steps}",
          "train.stop_at_fit=false", "checkpoint.every=0", "wandb.mode=disabled", "run.quiet=true",
          "train.lr=8"]  # a given lr: the same step as the bare loop


def bare(cfg) -> float:
    ds = build_dataset(cfg)
    x, y, m = ds.x, ds.y, cfg.model.width
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], m, bias=False), torch.nn.ReLU(),
                              *[torch.nn.Sequential(torch.nn.Linear(m, m, bias=False), torch.nn.ReLU())
                                for _ in range(cfg.model.depth)], torch.nn.Linear(m, y.shape[1], bias=False))
    net[0].weight.requires_grad_(False)
    net[-1].weight.requires_grad_(False)
    opt = torch.optim.SGD([q for q in net.parameters() if q.requires_grad], lr=float(cfg.train.lr) / m)
    start = time.perf_counter()
    for _ in range(cfg.train.steps):
        loss = 0.5 * (net(x) - y).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        float(loss.detach())  # a real loop looks at its loss too
    return time.perf_counter() - start


def ours(cfg) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        cfg.run.dir = d
        start = time.perf_counter()
        summary = run_trial(cfg)
        total = time.perf_counter() - start
    assert summary["steps"] == cfg.train.steps
    return total, summary["wall_s"]


print(f"FC width {args.width}, depth 3, n=64 full batch, {args.steps} steps, {torch.get_num_threads()} threads; "
      f"best of {args.repeats}")
for label, extra in [("metrics off", ["metrics.every=0", "metrics.ntk=false", "metrics.spectral=false"]),
                     ("every=10: train, drift, flips", ["metrics.every=10", "metrics.ntk=false",
                                                        "metrics.spectral=false"]),
                     ("every=10: all theory metrics", ["metrics.every=10"]),
                     ("every=1: all theory metrics", ["metrics.every=1"])]:
    # Interleave the two so that machine noise hits both alike; keep the best of each.
    bare_times, runs = [], []
    for _ in range(args.repeats):
        bare_times.append(bare(load_config(None, COMMON + extra)))
        runs.append(ours(load_config(None, COMMON + extra)))
    t_bare = min(bare_times)
    t_total = min(r[0] for r in runs)
    t_loop = min(r[1] for r in runs)
    n = 64 * args.steps
    print(f"{label:32s} bare {n / t_bare:9.0f} samples/s | run_trial {n / t_loop:9.0f} samples/s in the loop "
          f"(ratio {t_bare / t_loop:.3f}), {n / t_total:9.0f} incl. setup and final checkpoint "
          f"(ratio {t_bare / t_total:.3f})")


def parts(every: int) -> None:
    """Per-row milliseconds of each part of a logged row, timed in the loop (--parts)."""
    from collections import defaultdict

    from overparam_dist import train
    from overparam_dist.metrics import drift, tracker

    spent: dict[str, float] = defaultdict(float)
    timed = [(drift.WeightDrift, "compute", "drift: norms and spectral norms of W_t - W_0"),
             (tracker.TheoryMetrics, "_from_backward", "NTK: backwards of its own (C - 1)"),
             (tracker.TheoryMetrics, "_ntk_metrics", "NTK: Grams and spectrum"),
             (tracker.TheoryMetrics, "_activation_metrics", "flips and feature movement"),
             (train.Trainer, "log", "the whole row")]
    originals = [(cls, name, getattr(cls, name)) for cls, name, _ in timed]

    def timer(fn, label):
        def run(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - start
        return run

    for (cls, name, label), (_, _, fn) in zip(timed, originals):
        setattr(cls, name, timer(fn, label))
    try:
        ours(load_config(None, COMMON + [f"metrics.every={every}"]))  # warm
        spent.clear()
        ours(load_config(None, COMMON + [f"metrics.every={every}"]))
    finally:
        for cls, name, fn in originals:
            setattr(cls, name, fn)
    rows = args.steps // every + 1
    print(f"every={every}: ms per logged row, {rows} rows | " + " | ".join(
        f"{label} {spent[label] / rows * 1e3:.1f}" for _, _, label in timed))


if args.parts:
    for every in (10, 1):
        parts(every)
