"""What a sweep on Ray costs beyond the trials' own training time, on a private local Ray.

1. Single-process trials, one at a time (a private Ray with 1 CPU, trials with resources.cpus=1, so each
   trial has one torch thread), against the same trials run by `run_trial` in this process with one torch
   thread (the baseline, measured in this run). Sweeps of 1 and of N trials give the fixed cost of a sweep
   (Tune start, the first trial's process and imports) and the marginal cost of each further trial:
   marginal overhead = (T_N - T_1) / (N - 1) - baseline. Target: <= 3 s per trial. Measured both ways:
   `reuse_actors: true` (what `reuse_actors: auto`, the default, gives on a private Ray like this one) and one Ray
   actor per trial (what auto gives on a cluster a sweep connects to: each trial named on the dashboard).
2. 2-worker trials (parallel.dp=2) on a private Ray with all CPUs, one at a time, by both paths in the same run:
   local processes inside the Tune trial (launcher/sweep/local_trial.py, what a trial that fits one node gets;
   target: start and stop <= 5 s per trial), with reuse_actors (the default here; the fork server of
   launcher/local.py then stays warm) and with an actor per trial, and a Ray Train V2 worker group (what a trial
   spanning nodes gets).
   Sweeps of 1 and 3 trials: start and stop = (T_3 - T_1) / 2 - run_trial's own time inside them (summary
   wall_s). Beside them, the same trial under `overparam train parallel.dp=2` (torch's local launcher).
3. The quickstart (configs/sweep/quickstart.yaml) end to end: `overparam sweep` in a subprocess, embedded
   Ray start and stop included.

Run: .venv/bin/python bench/sweep_overhead.py [--trials 6] [--skip-quickstart]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from launcher.sweep.cluster import ray_session  # noqa: E402
from launcher.sweep.driver import run_sweep  # noqa: E402
from launcher.sweep.spec import load_sweep  # noqa: E402
from overparam_dist.config import load_config  # noqa: E402
from overparam_dist.train import run_trial  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--trials", type=int, default=12)
p.add_argument("--steps", type=int, default=100)
p.add_argument("--skip-quickstart", action="store_true")
args = p.parse_args()

SMALL = {"model.width": 128, "model.depth": 2, "data.n": 32, "train.steps": args.steps, "train.stop_at_fit": False,
         "metrics.every": 10, "checkpoint.every": 50, "data.target": "regression"}
NCPU = os.cpu_count() or 2


def write_sweep(d: Path, name: str, overrides: dict, grid: dict, cpus: float, reuse: bool) -> Path:
    import yaml

    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "overrides": overrides, "grid": grid,  # one trial per seed here
                                    "resources": {"cpus": cpus}, "reuse_actors": reuse, "batch_seeds": False}))
    return path


def baseline(d: Path, seeds: list[int], extra: dict) -> list[float]:
    times = []
    for s in seeds:
        cfg = load_config(None, [f"{k}={json.dumps(v)}" for k, v in {**SMALL, **extra}.items()]
                          + [f"seed={s}", f"run.dir={d / f'base-{s}'}", "run.quiet=true"])
        t = time.perf_counter()
        run_trial(cfg)
        times.append(time.perf_counter() - t)
    return times


def timed_sweep(d: Path, name: str, overrides: dict, grid: dict, cpus: float,
                reuse: bool = False) -> tuple[float, list[dict]]:
    sweep = load_sweep(write_sweep(d, name, overrides, grid, cpus, reuse), [], runs_dir=d / "runs")
    t = time.perf_counter()
    out = run_sweep(sweep, progress_every=1e9, out=open(os.devnull, "w"))
    wall = time.perf_counter() - t
    assert not out.failed and out.counts["completed"] == len(sweep.trials), out.states
    return wall, [json.loads((tr.run_dir / "summary.json").read_text()) for tr in sweep.trials]


with tempfile.TemporaryDirectory(prefix="opr-bench-") as tmp:
    import torch

    d = Path(tmp)
    seeds = list(range(args.trials))
    torch.set_num_threads(1)
    run_trial(load_config(None, ["train.steps=2", f"run.dir={d / 'warm'}", "run.quiet=true"]))  # warm imports
    base = baseline(d, seeds, {})
    base_mean = sum(base) / len(base)

    t0 = time.perf_counter()
    single = {}  # reuse_actors -> (sweep of 1 trial, sweep of N trials)
    with ray_session(None, num_cpus=1):
        ray_start = time.perf_counter() - t0
        for reuse in (False, True):
            single[reuse] = (timed_sweep(d, f"single1-{reuse}", SMALL, {"seed": [0]}, cpus=1, reuse=reuse)[0],
                             timed_sweep(d, f"singleN-{reuse}", SMALL, {"seed": seeds}, cpus=1, reuse=reuse)[0])
    import launcher.sweep.tune as tune_module

    two = {}  # path -> (sweep of 1 trial, sweep of 3 trials): the marginal trial excludes the sweep's fixed cost
    dp2 = {**SMALL, "parallel.dp": 2}
    with ray_session(None, num_cpus=NCPU):
        for path, reuse in (("local processes, reuse_actors (auto here)", True),
                            ("local processes, an actor per trial", False), ("worker group", False)):
            if path == "worker group":
                tune_module.fits_one_node = lambda cpus, gpus: False  # as for a trial that spans nodes
            tag = f"{path.split()[0]}-{reuse}"
            two[path] = (timed_sweep(d, f"{tag}1", dp2, {"seed": [0]}, cpus=NCPU / 2, reuse=reuse),
                         timed_sweep(d, f"{tag}3", dp2, {"seed": [0, 1, 2]}, cpus=NCPU / 2, reuse=reuse))
    # Reference for the 2-worker trials: the same trial under `overparam train parallel.dp=2`.
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "launcher", "train", "--quiet", f"run.dir={d / 'train-dp2'}",
                          "parallel.dp=2", *[f"{k}={json.dumps(v)}" for k, v in SMALL.items()]],
                         cwd=ROOT, capture_output=True, text=True)
    train_dp2 = time.perf_counter() - t
    assert res.returncode == 0, res.stderr

    n = len(seeds)
    print(f"{NCPU} CPUs; trials: FC width {SMALL['model.width']} depth {SMALL['model.depth']}, n={SMALL['data.n']}, "
          f"{args.steps} steps, metrics every 10 (11 Tune reports), checkpoints every 50")
    print(f"private local Ray start (1 CPU): {ray_start:.1f} s")
    print(f"single-process trials, one at a time: run_trial in-process {base_mean:.2f} s/trial (baseline)")
    for reuse, (wall_1, wall_n) in single.items():
        marginal = (wall_n - wall_1) / (n - 1) - base_mean
        mode = "reuse_actors: true (auto here)" if reuse else "an actor per trial"
        print(f"  {mode}: sweep of 1 trial {wall_1:.2f} s, of {n} trials {wall_n:.2f} s -> per-trial overhead "
              f"{marginal:+.2f} s (marginal, target <= 3 s); fixed per sweep {wall_1 - base_mean:.2f} s")
    print(f"2-worker trials, one at a time; `overparam train parallel.dp=2` {train_dp2:.1f} s:")
    for path, ((wall1, _), (wall3, sums3)) in two.items():
        marginal2, own2 = (wall3 - wall1) / 2, sum(s["wall_s"] for s in sums3) / 3
        print(f"  {path}: each further trial {marginal2:.1f} s, its training loop {own2:.2f} s -> start and stop "
              f"{marginal2 - own2:+.1f} s/trial (target <= 5 s for local processes); sweep of 1 trial {wall1:.1f} s")

    if not args.skip_quickstart:
        t = time.perf_counter()
        res = subprocess.run([sys.executable, "-m", "launcher", "sweep", "--config",
                              str(ROOT / "configs" / "sweep" / "quickstart.yaml"), "--runs-dir", str(d / "qs")],
                             cwd=ROOT, capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""})
        total = time.perf_counter() - t
        assert res.returncode == 0, res.stderr[-2000:]
        print(f"quickstart (8 trials, `overparam sweep`, embedded Ray start/stop included): {total:.1f} s "
              "(target < 300 s)")
