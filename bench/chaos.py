"""Issue 28, item 3: a chaos run of a 48-trial sweep on a real two-node Ray on this host (tests/chaos.py).

The sweep: widths 16, 24, 32 x depths 1, 2 x parallel.dp 1, 2 x seeds 0-3, W&B offline. The dp=1 cells run as six
groups of four batched seeds (one process each, batch_seeds: auto), the dp=2 trials as 24 trials of two local
processes. First the same sweep runs unfaulted (the reference of every trial, and the time to beat), then the
chaos run: a seeded schedule of >= 30 faults (trial processes SIGKILLed, rank 0 or another rank; one node killed
with every process under its raylet, a replacement joining; the driver SIGKILLed twice, each time followed by
--resume; the sweep's tmpfs filled for a few seconds; the tmpfs read-only while the driver is down, a --resume
refusing in one line). It prints the faults, the invariants (chaos_checks.py) and the time overhead, and exits 1
if any invariant broke.

    .venv/bin/python bench/chaos.py [--seed N] [--kills N] [--work DIR]     (root: it mounts a tmpfs; ~10-15 min)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from chaos import run_chaos  # noqa: E402

TRIAL = {"data.n": 16, "data.target": "regression", "train.steps": 60, "train.stop_at_fit": False,
         "metrics.every": 5, "checkpoint.every": 10, "wandb.mode": "offline"}
SPEC = {"name": "chaos", "overrides": TRIAL,
        "grid": {"model.width": [16, 24, 32], "model.depth": [1, 2], "parallel.dp": [1, 2], "seed": [0, 1, 2, 3]},
        "resources": {"cpus": 1}, "max_failures": 20}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=28, help="the fault schedule's seed")
    p.add_argument("--kills", type=int, default=26, help="trial processes killed")
    p.add_argument("--drivers", type=int, default=2, help="sweep drivers killed (each then --resume)")
    p.add_argument("--gap", type=float, default=0.0, help="mean seconds between faults (0: from the unfaulted sweep)")
    p.add_argument("--work", default=None, help="work directory (default: a new one under /tmp)")
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/chaos.py mounts a tmpfs: run it as root", file=sys.stderr)
        return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="chaos-bench-", dir="/tmp"))
    n_faults = args.kills + args.drivers + 3  # + a node, a full disk, a read-only episode
    t0 = time.time()
    # The gap between faults comes from the unfaulted sweep's time, measured first (run_chaos's reference): the
    # faults are spread over 1.2 times as long (the faults themselves make the sweep longer than that).
    gap = args.gap or None
    out = run_chaos(work, SPEC, seed=args.seed, kills=args.kills, drivers=args.drivers,
                    mean_gap=gap or (lambda ref_s: 1.2 * ref_s / n_faults), timeout=3600, reference="sweep",
                    disk="256m", fill_s=5.0)
    print(f"\nchaos run: {len(out.trials)} trials, seed {args.seed}, in {work} ({time.time() - t0:.0f} s in all)")
    print("\n".join(out.lines()))
    if not out.verdict.ok:
        for trial, problems in sorted(out.verdict.problems.items()):
            print(f"  {trial}: {problems}")
    print("RESULT: " + ("all invariants hold" if out.ok else "the code changed during the run: rerun it"
                        if out.code_changed else "INVARIANTS BROKEN"))
    return 0 if out.ok else 1


if __name__ == "__main__":
    sys.exit(main())
