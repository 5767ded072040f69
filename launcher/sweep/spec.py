"""`overparam sweep`: every trial of a grid (or a critical-width search) trained on Ray Tune.

A sweep file (configs/sweep/*.yaml) has these keys, all optional but `grid` or `search`:

    name: quickstart                     # the sweep's name (default: the file's stem) -> runs/<name>/
    base: experiment/paper_fc.yaml       # an experiment preset, relative to configs/ (or absolute)
    overrides: {data.n: 32}              # dotted config key -> value, applied to every trial
    grid: {model.width: [64, 256], model.depth: [1, 2]}    # cartesian product over config keys
    resources: {cpus: 1, gpus: 0}        # per process of a trial (a trial has parallel.dp x parallel.tp)
    max_failures: 2                      # retries of a failed trial (each resumes from its checkpoint)
    max_trials: 10000                    # a larger grid is refused in one line; raise it to run one
    reuse_actors: auto                   # true: actors run trial after trial; false: one named actor per trial
    batch_seeds: auto                    # the seeds of a cell as one batched model in one process (seeds.py)
    search: {kind: critical_width, widths: [4, 8, ..., 256], k: 0}    # absent = the grid itself
    reproduces: lee2019_linear           # a published claim (overparam_dist/analysis/claims.py) the report checks
    quick: {grid.model.width: [64, 256]} # the keys `--quick` changes (a small variant, run as <name>-quick)

Command-line `key=value` items: a key whose first part is one of the sweep keys above edits the sweep
file (`name=foo`, `grid.model.width=[64,128]`, `grid.seed=null` drops an axis, `resources.cpus=0.5`,
`search.widths=[...]`); any other key is a trial config override, the same as adding it under `overrides:`
(`train.steps=50`). Overriding a grid axis that way is refused: edit the axis (`grid.model.width=[...]`).

Everything is validated (every grid point's config with `load_config`) before Ray starts.
Execution: a trial needing one process runs `run_trial` in-process in a Tune function trainable (no worker
group). A trial with parallel.dp x parallel.tp > 1 processes builds a Ray Train V2 `TorchTrainer` inside its
Tune trainable; its workers call the same `run_trial`. Trial outputs: runs/<sweep>/<trial>/ (run_trial's own
layout); runs/<sweep>/results.csv, one row per trial, is rewritten (atomically) each time a trial ends.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from overparam_dist.analysis.claims import check_claim
from overparam_dist.config import Config, ConfigError, load_config, validate
from overparam_dist.parallel.dims import ParallelDims
from overparam_dist.rundir import finished_summary

from .naming import multirun_name, trial_name
from .schema import SWEEP_KEYS, SweepConfig, auto_bool, check_search, normalise_search, typed_sections, unknown_key

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"

SET_BY_SWEEP = ("run.dir", "run.name", "wandb.group", "run.preempt_file")  # a sweep sets these per trial

# Preemption: SIGUSR1 to the driver creates runs/<sweep>/.preempt (every trial's run.preempt_file): running trials
# checkpoint at once and end with status "preempted" (not finished: --resume reruns them from their checkpoints),
# no further trial starts, and `overparam sweep` exits with driver.EXIT_PREEMPTED.
PREEMPT_FILE = ".preempt"



# ----------------------------------------------------------------------------------------------- spec


@dataclass
class Trial:
    name: str
    point: dict[str, Any]  # the grid values of this trial (all grid axes, in grid order)
    cfg: Config
    members: tuple[Trial, ...] = ()  # a group of seeds trained together (seed_groups.py); cfg is the first's

    @property
    def workers(self) -> int:
        return ParallelDims.from_config(self.cfg).world

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)

    def finished_summary(self) -> dict | None:
        """The trial's summary.json when this exact trial already finished (what run_trial would return)."""
        return finished_summary(self.run_dir, self.cfg)


@dataclass
class Sweep:
    name: str
    file: Path | None
    base: Path | None
    overrides: dict[str, Any]
    grid: dict[str, list]
    resources: dict[str, float]
    max_failures: int
    reuse_actors: bool | None  # None: auto (tune.actors_reused)
    search: dict[str, Any]  # {"kind": "grid"} or {"kind": "critical_width", "widths": [...], "k": 0}
    runs_dir: Path
    trials: list[Trial] = field(default_factory=list)  # grid: every trial; critical_width: every candidate
    reproduces: str | None = None
    max_trials: int = SweepConfig.max_trials
    batch_seeds: bool | None = None  # None: auto (seed_groups.py)

    @property
    def dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def kind(self) -> str:
        return self.search["kind"]

    def check_inputs(self, on_this_host: bool = False) -> None:
        """What can be checked before Ray starts or a job is queued: every data set (once per data config) and
        every trial directory (one holding another experiment is refused); then, with `on_this_host` (a private
        local Ray), that each trial's processes fit in this host's memory (the one check that imports torch)."""
        from overparam_dist.data_files import check_available
        from overparam_dist.rundir import check_run_dir

        checked: set[str] = set()
        for t in self.trials:
            if (key := repr(t.cfg.data)) not in checked:
                check_available(t.cfg)
                checked.add(key)
            check_run_dir(t.cfg)
        if on_this_host:
            from overparam_dist.footprint import check_fits_memory

            for t in self.trials:
                check_fits_memory(t.cfg)

    def to_yaml_dict(self) -> dict:
        return {
            "name": self.name, "base": str(self.base) if self.base else None, "overrides": self.overrides,
            "grid": self.grid, "resources": self.resources, "max_failures": self.max_failures,
            "reuse_actors": "auto" if self.reuse_actors is None else self.reuse_actors, "search": self.search,
            "batch_seeds": "auto" if self.batch_seeds is None else self.batch_seeds,
            "reproduces": self.reproduces,
        }


def _parse_value(text: str) -> Any:
    """A command-line value, read the way the trial config reads one (OmegaConf's YAML: 1e-3 is a float)."""
    if not text.strip():
        return ""
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={text}"]))["v"]
    except Exception:
        return text


def _flat_keys(d: dict, where: str) -> dict[str, Any]:
    """Nested or dotted mappings -> {dotted key: value}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: key {k!r} must be a string")
        if isinstance(v, dict):
            for k2, v2 in _flat_keys(v, where).items():
                out[f"{k}.{k2}"] = v2
        else:
            out[k] = v
    return out


def _apply_cli(raw: dict, items: list[str], where: str) -> None:
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, text = item.split("=", 1)
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        _set(raw, key, _parse_value(text), where)


def _apply_quick(raw: dict, where: str, stem: str) -> None:
    """`--quick`: the file's `quick:` items, as if given on the command line; the sweep becomes <name>-quick."""
    quick = raw.pop("quick", None)
    if not isinstance(quick, dict) or not quick:
        raise ConfigError(f"{where}: --quick needs a non-empty 'quick:' mapping (sweep key -> value) in the file")
    for key, value in _flat_keys(quick, f"{where}, quick").items():
        _set(raw, key, value, where)
    raw["name"] = f"{raw.get('name') or stem}-quick"


def _set(raw: dict, key: str, value: Any, where: str) -> None:
    """One `key=value` item: a sweep key edits the sweep file, any other key is a trial config override."""
    head, _, rest = key.partition(".")
    if head in SWEEP_KEYS:
        if not rest:
            raw[head] = value
        else:
            section = raw.get(head)
            if section is None or isinstance(section, str):
                section = {"kind": section} if (head == "search" and isinstance(section, str)) else {}
            if not isinstance(section, dict):
                raise ConfigError(f"{where}: '{head}' is not a mapping, cannot set '{key}'")
            section[rest] = value
            raw[head] = section
    else:  # a trial config key
        raw.setdefault("overrides", {})
        if not isinstance(raw["overrides"], dict):
            raise ConfigError(f"{where}: 'overrides' must be a mapping of config key -> value")
        raw["overrides"][key] = value


def _resolve_base(base: Any, where: str) -> Path | None:
    if base in (None, ""):
        return None
    if not isinstance(base, str):
        raise ConfigError(f"{where}: 'base' must be a path to an experiment preset")
    p = Path(base)
    path = p if p.is_absolute() else CONFIGS / p
    if not path.is_file():
        raise ConfigError(f"{where}: base preset '{base}' not found ({path}); 'base' is relative to {CONFIGS}/")
    return path


def _load_trial(sweep_where: str, base: Path | None, settings: dict[str, Any], name: str,
                cells: dict[str, Config] | None = None) -> Config:
    """`cells` (critical_width): one merge per cell, its widths (checked positive integers) set on a copy."""
    try:
        if cells is None:
            return load_config(base, settings=settings)
        cell = repr(sorted((k, repr(v)) for k, v in settings.items() if k != "model.width"))
        if cell not in cells:
            cells[cell] = load_config(base, settings=settings)
        cfg = copy.deepcopy(cells[cell])
        cfg.model.width = settings["model.width"]
        validate(cfg)
        return cfg
    except ConfigError as exc:
        raise ConfigError(f"{sweep_where}, grid point {name}: {exc}") from None


def load_sweep(path: str | Path | None, cli: list[str] | None = None, runs_dir: str | Path = "runs",
               quick: bool = False) -> Sweep:
    """Read, override (`quick:` items first with `quick`, then `cli`), validate and expand a sweep file. Every
    problem is one ConfigError line."""
    raw: dict[str, Any] = {}
    where = "sweep"
    if path is not None:
        path = Path(path)
        where = f"sweep file '{path}'"
        if not path.is_file():
            raise ConfigError(f"sweep file '{path}' does not exist")
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path))
        except Exception as exc:
            raise ConfigError(f"{where} is not valid YAML: {str(exc).strip().splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: must be a mapping with keys {', '.join(SWEEP_KEYS)}")
        raw = loaded
    for key in raw:
        if key not in SWEEP_KEYS:
            raise unknown_key(where, str(key), SWEEP_KEYS)
    if quick:
        _apply_quick(raw, where, path.stem if path is not None else "sweep")
    raw.pop("quick", None)
    _apply_cli(raw, list(cli or []), where)

    name = raw.get("name") or (path.stem if path is not None else None)  # None: a multirun's, derived below
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name)):
        raise ConfigError(f"{where}: 'name' = {name!r} must be letters, digits, '.', '_' or '-'")
    base = _resolve_base(raw.get("base"), where)

    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: 'overrides' must be a mapping of config key -> value")
    overrides = _flat_keys(overrides, f"{where}, overrides")
    grid = raw.get("grid") or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: 'grid' must be a mapping of config key -> list of values")
    grid = {k: v for k, v in _flat_keys(grid, f"{where}, grid").items() if v is not None}  # KEY=null: no axis
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key '{key}' must be a non-empty list of values, got {values!r}")
        if any(isinstance(v, (list, dict)) for v in values):
            raise ConfigError(f"{where}: grid key '{key}' values must be scalars")
        if len(set(map(json.dumps, values))) != len(values):
            raise ConfigError(f"{where}: grid key '{key}' lists a value twice")
    for key in list(overrides) + list(grid):
        if key in SET_BY_SWEEP:
            raise ConfigError(f"{where}: config key '{key}' is set by the sweep (runs/<sweep>/<trial>); "
                              "use --runs-dir or name= instead")
    for key in overrides:
        if key in grid:
            raise ConfigError(f"{where}: config key '{key}' is a grid axis; change the axis (grid.{key}=[...]) "
                              "instead of overriding it")

    search = normalise_search(raw.get("search"), where)
    typed = typed_sections(where, {"resources": raw.get("resources") or {}, "search": search,
                                   "max_failures": raw.get("max_failures", SweepConfig.max_failures),
                                   "max_trials": raw.get("max_trials", SweepConfig.max_trials),
                                   "reuse_actors": auto_bool(raw, "reuse_actors", where),
                                   "batch_seeds": auto_bool(raw, "batch_seeds", where)})
    res = {"cpus": typed.resources.cpus, "gpus": typed.resources.gpus}
    for key, v in res.items():
        if not math.isfinite(v) or v < 0 or (key == "cpus" and v <= 0):
            raise ConfigError(f"{where}: 'resources.{key}' = {v!r} must be a "
                              + ("positive number" if key == "cpus" else "number >= 0"))
    max_failures = typed.max_failures
    if max_failures < 0:
        raise ConfigError(f"{where}: 'max_failures' = {max_failures!r} must be an integer >= 0")
    if typed.max_trials < 1:
        raise ConfigError(f"{where}: 'max_trials' = {typed.max_trials!r} must be an integer >= 1")

    search = check_search(typed.search, where)
    if search["kind"] == "critical_width" and "model.width" in grid:
        raise ConfigError(f"{where}: a critical_width search chooses model.width itself: remove it from 'grid' "
                          "(the candidates are search.widths)")
    if search["kind"] == "grid" and not grid and (path is not None or "grid" in raw):
        raise ConfigError(f"{where}: needs a non-empty 'grid' (config key -> list of values) or a 'search'")

    reproduces = check_claim(raw.get("reproduces"), f"{where}: 'reproduces'")
    if name is None:  # a multirun without a file: its axes and a short hash of its identity, so two never collide
        name = multirun_name(grid, {"base": str(base) if base else None, "overrides": overrides, "grid": grid,
                                    "search": search, "reproduces": reproduces})
    sweep = Sweep(name=name, file=Path(path) if path is not None else None, base=base, overrides=overrides,
                  grid=grid, resources=res, max_failures=max_failures, reuse_actors=typed.reuse_actors, search=search,
                  runs_dir=Path(runs_dir).absolute(), reproduces=reproduces, max_trials=typed.max_trials,
                  batch_seeds=typed.batch_seeds)
    sweep.trials = _expand(sweep, where)
    if search["kind"] == "critical_width" and (t := next((t for t in sweep.trials if t.cfg.data.target != "labels"
                                                           and t.cfg.train.target_loss <= 0
                                                           and t.cfg.train.target_ratio <= 0), None)):
        raise ConfigError(f"{where}: a critical_width search needs a fit to reach: data.target=labels (100% train "
                          f"accuracy), train.target_loss > 0 or train.target_ratio > 0; {t.name} has "
                          f"data.target={t.cfg.data.target}")
    return sweep


def _expand(sweep: Sweep, where: str) -> list[Trial]:
    axes = dict(sweep.grid)
    if sweep.kind == "critical_width":
        axes["model.width"] = sweep.search["widths"]
    varying = [k for k, v in axes.items() if len(v) > 1 or (k == "model.width" and sweep.kind == "critical_width")]
    total = math.prod(len(v) for v in axes.values())
    if total > sweep.max_trials:
        raise ConfigError(f"{where}: the grid has {total} trials ({' x '.join(str(len(v)) for v in axes.values())}), "
                          f"more than max_trials = {sweep.max_trials}; pass max_trials={total} to run it anyway")
    trials: list[Trial] = []
    seen: dict[str, dict] = {}
    cells: dict[str, Config] | None = {} if sweep.kind == "critical_width" else None  # one merge per cell
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        name = trial_name(point, varying)
        if name in seen:
            raise ConfigError(f"{where}: grid points {seen[name]} and {point} get the same trial name '{name}'")
        seen[name] = point
        cfg = _load_trial(where, sweep.base, {**sweep.overrides, **point}, name, cells)
        cfg.run.dir = str(sweep.dir / name)
        cfg.run.name = name
        cfg.run.quiet = True
        cfg.run.preempt_file = str(sweep.dir / PREEMPT_FILE)
        cfg.wandb.group = sweep.name
        trials.append(Trial(name, point, cfg))
    return trials


def trial_demand(trial: Trial, resources: dict[str, float]) -> tuple[float, float]:
    """(CPUs, GPUs) a trial holds while it runs."""
    n = trial.workers
    return (resources["cpus"] * n, resources["gpus"] * n)
