"""The default step size against the kernel regime: fc (`paper` unless overridden, e.g. model.param=ntk),
synthetic regression data, the defaults otherwise (n = 64, full-batch GD, 300 steps), depths 1, 2, 4, 8 and
widths 128 / 512 / 2048.

For each depth it prints lr * lambda_max(K) / n (the stability edge is 2; step_size.py), the final
`ntk/rel_drift` and `drift/weight_abs` by width, the fitted log-log slope of `drift/weight_abs` against width
(theory: -1/2 under paper, 0 under ntk) and of `drift/weight_rel` (-1 under both; analysis/theory.py), whether
`ntk/rel_drift` falls with width, and how often the full-batch loss rose between
consecutive logged steps. `--lr 8` measures the old default (train.lr = 8) for comparison.

Run: .venv/bin/python bench/lazy_regime.py [--lr 8] [--depths 1 2 4 8] [--widths 128 512 2048] [key=value ...]
"""

import argparse
import tempfile
from pathlib import Path

import torch
import yaml

from overparam_dist.config import effective_train_outer, load_config
from overparam_dist.data import build_dataset
from overparam_dist.metrics import names
from overparam_dist.metrics.analytic import infinite_width_ntk
from overparam_dist.metrics.fit import loglog_slope
from overparam_dist.sinks import read_jsonl
from overparam_dist.train import run_trial

p = argparse.ArgumentParser()
p.add_argument("--lr", default="auto")
p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8])
p.add_argument("--widths", type=int, nargs="+", default=[128, 512, 2048])
p.add_argument("--steps", type=int, default=300)
p.add_argument("overrides", nargs="*", metavar="key=value", help="more config, e.g. metrics.spectral=false")
args = p.parse_args()

print(f"train.lr={args.lr}  (fc, synthetic regression, n=64, {args.steps} full-batch steps, {args.overrides})")
print("depth  lr*lmax/n  " + "  ".join(f"rel_drift@{w}" for w in args.widths) + "  falls  "
      + "  ".join(f"w_abs@{w}" for w in args.widths) + "  slope(w_abs)  slope(w_rel)  loss_rises")
with tempfile.TemporaryDirectory() as tmp:
    for depth in args.depths:
        drift, wabs, wrel, rises = [], [], [], 0
        for width in args.widths:
            cfg = load_config(None, [f"model.width={width}", f"model.depth={depth}", "data.target=regression",
                                     f"train.steps={args.steps}", f"train.lr={args.lr}", "wandb.mode=disabled",
                                     "run.quiet=true", "checkpoint.every=0", f"run.dir={tmp}/d{depth}w{width}",
                                     *args.overrides])
            s = run_trial(cfg)
            losses = [r[names.TRAIN_LOSS] for r in read_jsonl(Path(cfg.run.dir) / "metrics.jsonl")]
            rises += sum(b > a for a, b in zip(losses, losses[1:]))
            drift.append(s[names.NTK_REL_DRIFT])
            wabs.append(s[names.DRIFT_WEIGHT_ABS])
            wrel.append(s[names.DRIFT_WEIGHT_REL])
        lr = yaml.safe_load((Path(cfg.run.dir) / "config.yaml").read_text())["derived"]["lr"]["lr"]
        ds = build_dataset(cfg)  # the kernel one output sees (step_size.py), for the edge column
        k = infinite_width_ntk(ds.x, depth, cfg.model.param, bias=cfg.model.bias, classes=ds.num_outputs,
                               train_outer=effective_train_outer(cfg)) / ds.num_outputs
        lam = float(torch.linalg.eigvalsh(k)[-1])
        falls = all(b < a for a, b in zip(drift, drift[1:]))
        print(f"{depth:5d}  {lr * lam / cfg.data.n:9.2f}  " + "  ".join(f"{v:12.4f}" for v in drift)
              + f"  {str(falls):5s}  " + "  ".join(f"{v:8.4f}" for v in wabs)
              + f"  {loglog_slope(args.widths, wabs) or float('nan'):12.3f}"
              + f"  {loglog_slope(args.widths, wrel) or float('nan'):12.3f}  {rises:10d}", flush=True)
