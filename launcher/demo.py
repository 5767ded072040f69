"""`make demo`: one real trial of the paper's FC net on synthetic data, on the CPU."""

import sys
from pathlib import Path

from .cli import main

PRESET = Path(__file__).resolve().parents[1] / "configs" / "experiment" / "paper_fc.yaml"

if __name__ == "__main__":
    sys.exit(main(["train", "--config", str(PRESET), "run.name=demo-paper-fc", *sys.argv[1:]]))
