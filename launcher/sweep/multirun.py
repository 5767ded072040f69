"""Sweeps without writing a sweep file, and a look at one before it runs.

`overparam sweep model.width=32,64,128 model.depth=1,2` is Hydra's multirun: a comma list is a grid axis
(grid.model.width=[32,64,128]) on the default experiment, or on an experiment given with --config. A sweep file
given with --config takes comma lists the same way. `--dry-run` prints the trials and starts nothing.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from overparam_dist.config import ConfigError

from .seed_groups import describe, group_seeds

CONFIG_SECTIONS = {"seed", "model", "data", "train", "metrics", "parallel", "checkpoint", "run", "wandb"}
SWEEP_SECTIONS = ("grid.", "search.", "resources.", "overrides.", "quick.")


def looks_like_experiment(path: str | Path) -> bool:
    """An experiment YAML (config sections only), not a sweep file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and bool(data) and set(data) <= CONFIG_SECTIONS


def _axis(word: str) -> str:
    """key=a,b,c -> grid.key=[a,b,c]; anything else as given (lists in brackets, quoted values, sweep keys)."""
    key, _, value = word.partition("=")
    if "," not in value or value.lstrip()[:1] in ("[", "{", "'", '"') or key.startswith(SWEEP_SECTIONS):
        return word
    if any(not v.strip() for v in value.split(",")):  # model.width=32, or 32,,64: a value is missing
        raise ConfigError(f"'{word}': an empty value in the comma-separated list; write key=a,b,c with every value "
                          "given")
    return f"grid.{key}=[{value}]"


def sweep_args(config: str | None, overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the sweep file, or None, and the sweep overrides) for `overparam sweep [--config F] [key=value ...]`."""
    words = [_axis(w) for w in overrides]
    if config is not None and looks_like_experiment(config):
        words.insert(0, f"base={Path(config).resolve()}")
        config = None
    return config, words


def dry_run_table(sweep, trial_demand) -> str:
    """Every trial with its grid values, processes, CPUs/GPUs and steps, then the totals."""
    axes = list(sweep.grid)
    head = ["trial", *axes, "processes", "cpus", "gpus", "steps"]
    rows = []
    for t in sweep.trials:
        cpus, gpus = trial_demand(t, sweep.resources)
        rows.append([t.name, *(t.point.get(a) for a in axes), t.workers, cpus, gpus, t.cfg.train.steps])
    total = ["total", *([""] * len(axes)), sum(r[-4] for r in rows), "", "", sum(r[-1] for r in rows)]
    cells = [[f"{v:g}" if isinstance(v, float) else str(v) for v in r] for r in [head, *rows, total]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    what = describe(group_seeds(sweep.trials, sweep.batch_seeds)) if sweep.search["kind"] == "grid" else \
        f"{len(rows)} candidate trial(s); the {sweep.search['kind']} search runs some of them"
    return "\n".join([f"sweep {sweep.name}: {what}, resources per process {sweep.resources}; "
                      f"outputs would go to {sweep.dir}/ (dry run: nothing written, no Ray started)", *lines])
