"""A cell of 5 seeds trained as one batched model (sweep key batch_seeds, overparam_dist/seeds.py) against the same
5 seeds as 5 separate trials, at widths 64, 256 and 1024 (issue 27's target: >= 3x at width 64 on 2 cores).

The cell: the quickstart's trial (paper FC, depth 2, n = 32 synthetic samples, full-batch GD, every theory metric
every 20 steps, a checkpoint every 50), 200 steps (50 at width 1024). Two comparisons, each measured in this run:

1. As a sweep runs them, on one private Ray with all CPUs: `batch_seeds: false` (5 trials; each is a new actor,
   i.e. a new process that imports torch and the library, as `reuse_actors: auto` gives on a cluster) and with
   `reuse_actors: true` (one process runs trial after trial, as auto gives on a laptop), against `batch_seeds: true`
   (1 trial). Wall time of each sweep (Tune's start included, the same in all three).
2. In this process, no Ray: 5 calls of run_trial against one run_seeds of the 5 seeds: what the batched step itself
   saves (the rest of each row - theory metrics, the W&B and JSONL rows, checkpoints - is per seed either way).

Why 3x at width 64 is out of reach on 2 cores: a batched sweep cannot be faster than `floor`, the same sweep
training 1 step (Tune's start and end and one trial process, which imports Ray Tune, torch and the library: ~5 s
here), and the 5-actor sweep pays that process start ceil(5/2) = 3 times over. So `ceiling` = actors / floor is the
best ratio any batch could show (3.1x and 3.3x measured in two runs), and the batched sweep's actors / (floor + c_5)
reaches 3 only if the batch's own training c_5 (5 seeds, 200 steps, 11 theory-metric rows each) costs at most
actors / 3 - floor: 0.1 s and 0.5 s in those runs, while the same 5 seeds take 0.9-1.3 s batched and 1.2-1.7 s one
after another in one process. What the batch saves at width 64 is the 4 process starts: CPU time, which a cluster
charges, more than wall time.

Run: .venv/bin/python bench/seed_batch.py [--widths 64 256 1024] [--seeds 5]
"""

import argparse
import json
import os
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
from overparam_dist.train import run_seeds, run_trial  # noqa: E402

SEEDS = list(range(5))


def cell(width: int, steps: int | None = None) -> dict:
    steps = steps or (50 if width >= 1024 else 200)
    return {"model.width": width, "model.depth": 2, "data.n": 32, "train.steps": steps,
            "train.stop_at_fit": False, "metrics.every": 20, "checkpoint.every": 50, "wandb.mode": "disabled"}


def sweep_time(d: Path, name: str, width: int, batch: bool, reuse: bool, steps: int | None = None) -> float:
    import yaml

    path = d / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "base": "experiment/paper_fc.yaml", "overrides": cell(width, steps),
                                    "grid": {"seed": SEEDS}, "resources": {"cpus": 1}, "reuse_actors": reuse,
                                    "batch_seeds": batch}))
    sweep = load_sweep(path, [], runs_dir=d / "runs")
    t = time.perf_counter()
    out = run_sweep(sweep, progress_every=1e9, out=open(os.devnull, "w"))
    wall = time.perf_counter() - t
    assert not out.failed and out.counts["completed"] == len(SEEDS), out.states
    return wall


def in_process(d: Path, width: int, seeds: list[int] = SEEDS, steps: int | None = None,
               device: str = "auto") -> tuple[float, float]:
    """(seconds of the seeds by run_trial one after another, seconds of the same seeds by one run_seeds)."""
    def cfgs(tag: str):
        return [load_config(ROOT / "configs/experiment/paper_fc.yaml",
                            [f"{k}={json.dumps(v)}" for k, v in cell(width, steps).items()]
                            + [f"seed={s}", f"run.dir={d / f'{tag}{width}-{s}'}", "run.quiet=true",
                               f"train.device={device}"]) for s in seeds]

    t = time.perf_counter()
    for cfg in cfgs("alone"):
        run_trial(cfg)
    alone = time.perf_counter() - t
    t = time.perf_counter()
    run_seeds(cfgs("batched"))
    return alone, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    args = p.parse_args()
    print(f"a cell of {len(SEEDS)} seeds: paper FC depth 2, n = 32, {os.cpu_count()} CPUs; times in seconds")
    print(f"{'width':>6} | {'sweep: 5 actors':>15} {'1 reused actor':>15} {'batched':>8} {'ratios':>13} "
          f"{'ceiling':>7} | {'in-process: 5 alone':>19} {'batched':>8} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp, ray_session(None, num_cpus=os.cpu_count()):
        d = Path(tmp)
        in_process(d, 32)  # warm: the first run_trial and run_seeds of a process import and build more
        # The floor of any batched sweep: Tune's start and end and one trial process, training 1 step (the better of
        # two: the first Tune run of a process sets more up)
        floor = min(sweep_time(d, f"floor{i}", 64, batch=True, reuse=False, steps=1) for i in range(2))
        print(f"a batched sweep of 1 step: {floor:.1f} s (Tune and one trial process: no batch can be faster)")
        for width in args.widths:
            actors = sweep_time(d, f"actors{width}", width, batch=False, reuse=False)
            reused = sweep_time(d, f"reused{width}", width, batch=False, reuse=True)
            batched = sweep_time(d, f"batched{width}", width, batch=True, reuse=False)
            alone, together = in_process(d, width)
            print(f"{width:>6} | {actors:15.1f} {reused:15.1f} {batched:8.1f} {actors / batched:5.2f}x "
                  f"{reused / batched:5.2f}x {actors / floor:6.2f}x | {alone:19.1f} {together:8.1f} "
                  f"{alone / together:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
