"""The run-directory contract: the one place its file names, its identity check and its atomic write live.

    runs/<sweep>/<trial>/config.yaml     the resolved config, plus `derived:` facts (effective lr, data, world)
    runs/<sweep>/<trial>/metrics.jsonl   one JSON object per logged step (metric keys: metrics/names.py)
    runs/<sweep>/<trial>/summary.json    final metrics + status (completed | diverged | failed | preempted)
    runs/<sweep>/<trial>/checkpoints/    DCP checkpoints, step_<8 digits>/
    runs/<sweep>/<trial>/wandb/          offline W&B run files
    runs/<sweep>/results.csv             one row per trial (analysis/results.py writes and reads it)
    runs/<sweep>/sweep.yaml              the resolved sweep
    runs/<sweep>/report/                 PNG plots + index.html

A trial directory is "finished" when summary.json says completed or diverged for the same requested step count:
a rerun of that exact trial then returns the summary instead of training again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .config import Config, ConfigError, flatten, run_dir, to_dict

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
WANDB_DIR = "wandb"
RESULTS_FILE = "results.csv"
SWEEP_FILE = "sweep.yaml"
REPORT_DIR = "report"

FINISHED = ("completed", "diverged")  # statuses of a trial that will not train further
# Keys whose change makes an existing run directory a different experiment.
IDENTITY_SECTIONS = ("seed", "model", "data", "train")
IDENTITY_EXEMPT = {"train.steps", "train.device", "train.stop_at_fit", "train.target_loss"}


def atomic_write(path: Path, text: str | bytes) -> Path:
    """Write a file whole or not at all: a temporary sibling, fsync, then rename over the target.

    Readers (the report, a resuming driver, `tail -f`) never see a torn file, whatever kills the writer.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(text.encode() if isinstance(text, str) else text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _identity(cfg_dict: dict) -> dict:
    flat = flatten({k: cfg_dict[k] for k in IDENTITY_SECTIONS if k in cfg_dict})
    return {k: v for k, v in flat.items() if k not in IDENTITY_EXEMPT}


def check_run_dir(cfg: Config) -> None:
    """Refuse to reuse a run directory that holds a different experiment (nothing is overwritten)."""
    out = run_dir(cfg)
    cfg_file = out / CONFIG_FILE
    if not cfg_file.is_file():
        if out.exists() and any(out.iterdir()):
            raise ConfigError(f"run directory '{out}' exists and is not a run of ours; choose another run.dir")
        return
    with open(cfg_file) as f:
        old = yaml.safe_load(f) or {}
    old.pop("derived", None)
    a, b = _identity(old), _identity(to_dict(cfg))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"run directory '{out}' holds a different run ({key}: {a.get(key)!r} there, {b.get(key)!r} now); "
                "choose another run.name or run.dir"
            )


def finished_summary(out: Path, requested_steps: int) -> dict | None:
    """summary.json of the trial in `out` when it already finished with this step budget, else None."""
    path = Path(out) / SUMMARY_FILE
    if not (path.is_file() and (Path(out) / CONFIG_FILE).is_file()):
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("status") in FINISHED and done.get("requested_steps") == requested_steps:
        return done
    return None


def write_config(out: Path, cfg: Config, derived: dict) -> Path:
    return atomic_write(Path(out) / CONFIG_FILE, yaml.safe_dump({**to_dict(cfg), "derived": derived}, sort_keys=False))


def write_summary(out: Path, summary: dict) -> Path:
    return atomic_write(Path(out) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
