"""How long the command line takes to answer, against `python -c "import torch"` measured in the same run.

Each command is run as a user runs it (`python -m launcher ...`, a new interpreter each time) `--repeat` times,
interleaved with the baseline so that a load change hits both; the median is printed with its ratio to the
baseline's median. Target (issue 23): every command <= 1.5 s and <= 0.5x the baseline on 2 cores.

    .venv/bin/python bench/cli_latency.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    ["--help"],
    ["--version"],
    ["presets"],
    ["train", "--print-config"],
    ["train", "--config", "paper_fc", "model.width=4096", "--print-config"],
    ["sweep", "--config", "quickstart", "--dry-run"],
    ["sweep", "model.width=32,64,128", "seed=0,1,2", "--dry-run"],
    ["submit", "slurm", "--config", "quickstart", "--dry-run"],
    ["train", "model.widht=3"],
    ["train", "model.width=-3"],
    ["train", "data.name=mnist", "data.root=/nonexistent"],
    ["sweep", "--config", "quickstart", "model.widht=3"],
]


def _time(argv: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    baseline_argv = [sys.executable, "-c", "import torch"]
    with tempfile.TemporaryDirectory() as cwd:  # a --dry-run or an error writes nothing, but never into the tree
        base, times = [], {i: [] for i in range(len(COMMANDS))}
        for _ in range(args.repeat):
            base.append(_time(baseline_argv, cwd))
            for i, cmd in enumerate(COMMANDS):
                times[i].append(_time([sys.executable, "-m", "launcher", *cmd], cwd))
    ref = statistics.median(base)
    print(f"baseline: python -c 'import torch'  {ref:.3f} s (median of {args.repeat})")
    print(f"{'command':<66} {'median s':>9} {'x import torch':>15}")
    worst = 0.0
    for i, cmd in enumerate(COMMANDS):
        t = statistics.median(times[i])
        worst = max(worst, t / ref)
        print(f"{'overparam ' + ' '.join(cmd):<66} {t:>9.3f} {t / ref:>15.2f}")
    print(f"worst ratio {worst:.2f} (target <= 0.5)")


if __name__ == "__main__":
    main()
