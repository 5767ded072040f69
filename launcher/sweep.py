"""`overparam sweep`: every trial of a grid (or a critical-width search) trained on Ray Tune.

A sweep file (configs/sweep/*.yaml) has these keys, all optional but `grid` or `search`:

    name: quickstart                     # the sweep's name (default: the file's stem) -> runs/<name>/
    base: experiment/paper_fc.yaml       # an experiment preset, relative to configs/ (or absolute)
    overrides: {data.n: 32}              # dotted config key -> value, applied to every trial
    grid: {model.width: [64, 256], model.depth: [1, 2]}    # cartesian product over config keys
    resources: {cpus: 1, gpus: 0}        # per process of a trial (a trial has parallel.dp x parallel.tp)
    max_failures: 2                      # retries of a failed trial (each resumes from its checkpoint)
    search: {kind: critical_width, widths: [4, 8, ..., 256], k: 0}    # absent = the grid itself

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

import contextlib
import csv
import difflib
import itertools
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import yaml

from overparam_dist.config import Config, ConfigError, flatten, load_config, to_dict

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

SWEEP_KEYS = ("name", "base", "overrides", "grid", "resources", "max_failures", "search")
RESOURCE_KEYS = ("cpus", "gpus")
SEARCH_KINDS = ("grid", "critical_width")
CRITICAL_WIDTH_KEYS = ("kind", "widths", "k")
DEFAULT_WIDTHS = [2 ** i for i in range(2, 11)]  # 4 .. 1024
SET_BY_SWEEP = ("run.dir", "run.name", "wandb.group", "run.preempt_file")  # a sweep sets these per trial
DEFAULT_MAX_FAILURES = 2

RESULTS_FILE = "results.csv"
SWEEP_FILE = "sweep.yaml"  # the resolved sweep, written when the sweep starts
PIDS_DIR = ".workers"  # <trial>.pid: the process that runs run_trial (rank 0), for operators and tests
FINAL_KEY = "summary_json"  # the last Tune result of a trial carries its summary.json as JSON text
# Preemption: SIGUSR1 to the driver creates runs/<sweep>/.preempt (every trial's run.preempt_file): running trials
# checkpoint at once and end with status "preempted" (not finished: --resume reruns them from their checkpoints),
# no further trial starts, and `overparam sweep` exits with EXIT_PREEMPTED.
PREEMPT_FILE = ".preempt"
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (with --resume)

# Short tags for trial names: w64-d2-s0. Keys not listed use their last part (tau0.1); "" = value only.
NAME_TAGS = {
    "model.width": "w", "model.depth": "d", "seed": "s", "data.n": "n", "train.lr": "lr",
    "parallel.dp": "dp", "parallel.tp": "tp", "train.batch_size": "bs", "data.label_noise": "noise",
    "train.steps": "steps", "model.tau": "tau", "data.dim": "dim", "data.classes": "c",
    "model.param": "", "model.arch": "", "data.name": "", "data.target": "", "train.loss": "",
}


# ----------------------------------------------------------------------------------------------- spec


@dataclass
class Trial:
    name: str
    point: dict[str, Any]  # the grid values of this trial (all grid axes, in grid order)
    cfg: Config

    @property
    def workers(self) -> int:
        return self.cfg.parallel.dp * self.cfg.parallel.tp

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run.dir)


@dataclass
class Sweep:
    name: str
    file: Path | None
    base: Path | None
    overrides: dict[str, Any]
    grid: dict[str, list]
    resources: dict[str, float]
    max_failures: int
    search: dict[str, Any]  # {"kind": "grid"} or {"kind": "critical_width", "widths": [...], "k": 0}
    runs_dir: Path
    trials: list[Trial] = field(default_factory=list)  # grid: every trial; critical_width: every candidate

    @property
    def dir(self) -> Path:
        return self.runs_dir / self.name

    @property
    def kind(self) -> str:
        return self.search["kind"]

    def to_yaml_dict(self) -> dict:
        return {
            "name": self.name, "base": str(self.base) if self.base else None, "overrides": self.overrides,
            "grid": self.grid, "resources": self.resources, "max_failures": self.max_failures,
            "search": self.search,
        }


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _numbers(v: Any) -> Any:
    """PyYAML reads 1e-3 as a string (YAML 1.1); read it as the number everyone means."""
    if isinstance(v, str) and _FLOAT.fullmatch(v.strip()):
        return float(v)
    if isinstance(v, list):
        return [_numbers(x) for x in v]
    if isinstance(v, dict):
        return {k: _numbers(x) for k, x in v.items()}
    return v


def _parse_value(text: str) -> Any:
    try:
        return _numbers(yaml.safe_load(text)) if text.strip() else ""
    except yaml.YAMLError:
        return text


def _unknown(what: str, key: str, allowed: tuple[str, ...] | list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{what}: unknown key '{key}'{hint}; allowed: {', '.join(allowed)}")


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
        value = _parse_value(text)
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


def _dot_value(v: Any) -> str:
    return json.dumps(v)  # OmegaConf's dotlist parser reads JSON scalars (numbers, true/false, null, "str")


def _tag(key: str, value: Any) -> str:
    tag = NAME_TAGS.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{tag}{text}")


def trial_name(point: dict[str, Any], varying: list[str]) -> str:
    return "-".join(_tag(k, point[k]) for k in varying) or "trial"


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


def _load_trial(sweep_where: str, base: Path | None, settings: dict[str, Any], name: str) -> Config:
    try:
        return load_config(base, [f"{k}={_dot_value(v)}" for k, v in settings.items()])
    except ConfigError as exc:
        raise ConfigError(f"{sweep_where}, grid point {name}: {exc}") from None


def load_sweep(path: str | Path | None, cli: list[str] | None = None, runs_dir: str | Path = "runs") -> Sweep:
    """Read, override, validate and expand a sweep file. Every problem is one ConfigError line."""
    raw: dict[str, Any] = {}
    where = "sweep"
    if path is not None:
        path = Path(path)
        where = f"sweep file '{path}'"
        if not path.is_file():
            raise ConfigError(f"sweep file '{path}' does not exist")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{where}: must be a mapping with keys {', '.join(SWEEP_KEYS)}")
        raw = _numbers(loaded)
    for key in raw:
        if key not in SWEEP_KEYS:
            raise _unknown(where, str(key), SWEEP_KEYS)
    _apply_cli(raw, list(cli or []), where)

    name = raw.get("name") or (path.stem if path is not None else "sweep")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
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

    resources = raw.get("resources") or {}
    if not isinstance(resources, dict):
        raise ConfigError(f"{where}: 'resources' must be a mapping with keys {', '.join(RESOURCE_KEYS)}")
    for key in resources:
        if key not in RESOURCE_KEYS:
            raise _unknown(f"{where}, resources", str(key), RESOURCE_KEYS)
    res = {"cpus": resources.get("cpus", 1), "gpus": resources.get("gpus", 0)}
    for key, lo in (("cpus", 0.0), ("gpus", 0.0)):
        v = res[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < lo \
                or (key == "cpus" and v <= 0):
            raise ConfigError(f"{where}: 'resources.{key}' = {v!r} must be a "
                              + ("positive number" if key == "cpus" else "number >= 0"))

    max_failures = raw.get("max_failures", DEFAULT_MAX_FAILURES)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ConfigError(f"{where}: 'max_failures' = {max_failures!r} must be an integer >= 0")

    search = _parse_search(raw.get("search"), where)
    if search["kind"] == "critical_width" and "model.width" in grid:
        raise ConfigError(f"{where}: a critical_width search chooses model.width itself: remove it from 'grid' "
                          "(the candidates are search.widths)")
    if search["kind"] == "grid" and not grid and path is not None and "grid" not in raw:
        raise ConfigError(f"{where}: needs a 'grid' (config key -> list of values) or a 'search'")

    sweep = Sweep(name=name, file=Path(path) if path is not None else None, base=base, overrides=overrides,
                  grid=grid, resources=res, max_failures=max_failures, search=search,
                  runs_dir=Path(runs_dir).absolute())
    sweep.trials = _expand(sweep, where)
    return sweep


def _parse_search(search: Any, where: str) -> dict[str, Any]:
    if search is None or search == "grid":
        return {"kind": "grid"}
    if isinstance(search, str):
        search = {"kind": search}
    if not isinstance(search, dict):
        raise ConfigError(f"{where}: 'search' must be one of {', '.join(SEARCH_KINDS)} or a mapping with 'kind'")
    kind = search.get("kind", "critical_width")
    if kind not in SEARCH_KINDS:
        raise ConfigError(f"{where}: 'search.kind' = {kind!r}: allowed values are {', '.join(SEARCH_KINDS)}")
    if kind == "grid":
        if set(search) - {"kind"}:
            raise _unknown(f"{where}, search", sorted(set(search) - {"kind"})[0], ("kind",))
        return {"kind": "grid"}
    for key in search:
        if key not in CRITICAL_WIDTH_KEYS:
            raise _unknown(f"{where}, search", str(key), CRITICAL_WIDTH_KEYS)
    widths = search.get("widths", DEFAULT_WIDTHS)
    if not isinstance(widths, list) or len(widths) < 1 or any(
            isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
        raise ConfigError(f"{where}: 'search.widths' must be a list of positive integers")
    if sorted(set(widths)) != widths:
        raise ConfigError(f"{where}: 'search.widths' must be strictly increasing")
    k = search.get("k", 0)
    if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k == 1:
        raise ConfigError(f"{where}: 'search.k' = {k!r} must be 0 (use the free slots) or an integer >= 2")
    return {"kind": "critical_width", "widths": widths, "k": k}


def _expand(sweep: Sweep, where: str) -> list[Trial]:
    axes = dict(sweep.grid)
    if sweep.kind == "critical_width":
        axes["model.width"] = sweep.search["widths"]
    varying = [k for k, v in axes.items() if len(v) > 1 or (k == "model.width" and sweep.kind == "critical_width")]
    trials: list[Trial] = []
    seen: dict[str, dict] = {}
    for values in itertools.product(*axes.values()):
        point = dict(zip(axes, values))
        name = trial_name(point, varying)
        if name in seen:
            raise ConfigError(f"{where}: grid points {seen[name]} and {point} get the same trial name '{name}'")
        seen[name] = point
        cfg = _load_trial(where, sweep.base, {**sweep.overrides, **point}, name)
        cfg.run.dir = str(sweep.dir / name)
        cfg.run.name = name
        cfg.run.quiet = True
        cfg.run.preempt_file = str(sweep.dir / PREEMPT_FILE)
        cfg.wandb.group = sweep.name
        trials.append(Trial(name, point, cfg))
    return trials


# ------------------------------------------------------------------------------------- results table


def finished_summary(trial: Trial) -> dict | None:
    """The trial's summary.json when this exact trial already finished (what run_trial would return)."""
    from overparam_dist.train import CONFIG_FILE, FINISHED, SUMMARY_FILE

    path = trial.run_dir / SUMMARY_FILE
    if not (path.is_file() and (trial.run_dir / CONFIG_FILE).is_file()):
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if done.get("status") in FINISHED and done.get("requested_steps") == trial.cfg.train.steps:
        return done
    return None


def _csv_value(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def write_csv_atomic(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: _csv_value(r.get(c)) for c in columns})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Book:
    """What the driver knows about every trial; writes results.csv each time a trial ends."""

    def __init__(self, sweep: Sweep, out=None):
        self.sweep = sweep
        self.by_name = {t.name: t for t in sweep.trials}
        self.state: dict[str, str] = {}  # name -> running | completed | diverged | failed | stopped | preempted
        self.summary: dict[str, dict] = {}
        self.loss: dict[str, float] = {}  # latest known train/loss
        self.error: dict[str, str] = {}
        self.out = out or sys.stdout
        self.t0 = time.time()
        self._last_line = ""
        self._last_print = 0.0
        self.scheduled = 0  # trials the plan will run (pending + running + ended), for the progress line

    def __getstate__(self):  # Tune pickles its searcher and callbacks (which hold the book): not the stream
        return {k: v for k, v in self.__dict__.items() if k != "out"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out = sys.stdout

    # --- events
    def started(self, name: str) -> None:
        self.state[name] = "running"

    def result(self, name: str, result: dict) -> None:
        if FINAL_KEY in result:
            self.finished(name, json.loads(result[FINAL_KEY]))
            return
        loss = result.get("train/loss")
        if isinstance(loss, (int, float)):
            self.loss[name] = float(loss)

    def finished(self, name: str, summary: dict, write: bool = True) -> None:
        self.summary[name] = summary
        self.state[name] = summary.get("status", "completed")
        loss = summary.get("train/loss")
        if isinstance(loss, (int, float)) and math.isfinite(loss):
            self.loss[name] = float(loss)
        elif self.state[name] == "diverged":
            self.loss[name] = math.inf
        if write:
            self.write()

    def ended(self, name: str, error: str | None = None) -> None:
        """Tune says the trial is over; without a final summary it was stopped or it failed."""
        if name in self.summary:
            return
        if error is not None:
            self.state[name] = "failed"
            self.error[name] = error
        else:
            self.state[name] = "stopped"
        self.write()

    # --- outputs
    def rows(self) -> list[dict]:
        rows = []
        for t in self.sweep.trials:
            if t.name not in self.state or self.state[t.name] == "running":
                continue
            s = self.summary.get(t.name, {})
            row = {"trial": t.name, "status": self.state[t.name]}
            row.update(flatten(to_dict(t.cfg)))
            row.update({k: v for k, v in s.items() if k not in row and k != "status"})
            if t.name in self.error:
                row["error"] = self.error[t.name]
            rows.append(row)
        return rows

    def write(self) -> Path:
        rows = self.rows()
        columns: list[str] = []
        for r in rows:
            columns.extend(c for c in r if c not in columns)
        if "error" in columns:
            columns.remove("error")
            columns.append("error")
        path = self.sweep.dir / RESULTS_FILE
        write_csv_atomic(path, rows, columns or ["trial", "status"])
        return path

    def counts(self) -> dict[str, int]:
        c = {"running": 0, "completed": 0, "diverged": 0, "failed": 0, "stopped": 0, "preempted": 0}
        for s in self.state.values():
            c[s] = c.get(s, 0) + 1
        return c

    def line(self) -> str:
        c = self.counts()
        done = c["completed"] + c["diverged"]
        ended = done + c["failed"] + c["stopped"] + c["preempted"]
        parts = [f"[{self.sweep.name} {_clock(time.time() - self.t0)}] done {done}"
                 + (f"/{self.scheduled}" if self.scheduled else "")
                 + f" (diverged {c['diverged']}, failed {c['failed']}"
                 + (f", stopped {c['stopped']}" if c["stopped"] else "")
                 + (f", preempted {c['preempted']}" if c["preempted"] else "") + ")",
                 f"running {c['running']}"]
        if self.scheduled:  # a grid knows its size; a search does not
            parts.append(f"pending {max(0, self.scheduled - ended - c['running'])}")
        if self.loss:
            best = min(self.loss, key=self.loss.get)
            worst = max(self.loss, key=self.loss.get)
            parts.append(f"loss best {self.loss[best]:.3g} ({best}) worst {self.loss[worst]:.3g} ({worst})")
        return " | ".join(parts)

    def maybe_print(self, every_s: float, force: bool = False) -> None:
        """A progress line when the counts change (at most once a second) and every `every_s` seconds."""
        now = time.time()
        key = json.dumps(self.counts())
        if force or (key != self._last_line and now - self._last_print >= 1.0) or now - self._last_print >= every_s:
            print(self.line(), file=self.out, flush=True)
            self._last_line, self._last_print = key, now


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


# ------------------------------------------------------------------------------------------- Ray side


@dataclass
class RayInfo:
    address: str
    dashboard_url: str | None
    embedded: bool


def _check_reachable(address: str) -> None:
    if address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme in ("http", "https"):
        raise ConfigError(
            f"--address '{address}' is a dashboard URL: `overparam sweep` connects to the cluster itself "
            "(HOST:6379 or ray://HOST:10001); `overparam submit ray --address http://HOST:8265` submits a job")
    if url.scheme not in ("tcp", "ray") or not url.hostname or not url.port:
        raise ConfigError(f"--address '{address}' is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at '{address}': {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[RayInfo]:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a private local Ray and stop it after.

    A process that is already connected (ray.is_initialized()) keeps its connection and is not shut down.
    """
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        yield RayInfo(address=ctx.gcs_address, dashboard_url=None, embedded=False)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    tmp = None
    if address:
        _check_reachable(address)
        try:
            ctx = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:
            msg = _first_line(exc)
            if "auth" in msg.lower() or "token" in msg.lower():
                msg += " (token auth: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, " \
                       "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            raise ConfigError(f"cannot connect to the Ray cluster at '{address}': {msg}") from None
        info = RayInfo(address=address, dashboard_url=_url(ctx.dashboard_url), embedded=False)
    else:
        tmp = f"/tmp/opr-{secrets.token_hex(3)}"  # AF_UNIX socket paths must stay short
        ctx = ray.init(address="local", _temp_dir=tmp, num_cpus=num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", logging_level="ERROR",
                       log_to_driver=False)
        info = RayInfo(address=ray.get_runtime_context().gcs_address, dashboard_url=_url(ctx.dashboard_url),
                       embedded=True)
    try:
        yield info
    finally:
        ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _url(dashboard: str | None) -> str | None:
    if not dashboard:
        return None
    return dashboard if "://" in dashboard else f"http://{dashboard}"


def trial_demand(trial: Trial, resources: dict[str, float]) -> tuple[float, float]:
    """(CPUs, GPUs) a trial holds while it runs."""
    n = trial.workers
    return (resources["cpus"] * n, resources["gpus"] * n)


def _placement(config: dict):
    from ray.tune import PlacementGroupFactory

    res, n = config["resources"], config["workers"]
    if n == 1:
        bundle = {"CPU": res["cpus"]}
        if res["gpus"]:
            bundle["GPU"] = res["gpus"]
        return PlacementGroupFactory([bundle])
    # The Tune trainable of a worker-group trial only waits for TorchTrainer.fit(); the Train workers
    # (their own placement group) hold the rest of the trial's CPUs and its GPUs (see _worker_resources).
    return PlacementGroupFactory([{"CPU": TRAINABLE_CPU}])


TRAINABLE_CPU = 0.01  # Ray refuses a zero-resource bundle


def _worker_resources(res: dict[str, float], n: int) -> dict[str, float]:
    """Per Train worker: the trial's n x cpus CPUs less the trainable's share, so the trial takes exactly
    n x cpus (two workers with cpus=1 fit a 2-CPU machine; 0.01 more would wait forever)."""
    per = {"CPU": max(res["cpus"] - TRAINABLE_CPU / n, res["cpus"] / 2)}
    if res["gpus"]:
        per["GPU"] = res["gpus"]
    return per


def _cfg_from_dict(cfg_dict: dict) -> Config:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), cfg_dict))


def _write_pid(path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, p)


def final_result(summary: dict) -> dict:
    """The trial's last Tune result: its numeric summary values plus the whole summary as JSON."""
    out: dict[str, Any] = {k: v for k, v in summary.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "steps"}
    out["step"] = summary.get("steps")
    out["trial_status"] = summary.get("status")
    out[FINAL_KEY] = json.dumps(summary)
    return out


def _preempted_already(config: dict) -> bool:
    """The sweep was preempted before this trial started: end it at once, as preempted (nothing written)."""
    flag = config["cfg"].get("run", {}).get("preempt_file")
    return bool(flag) and os.path.exists(flag)


def trainable(config: dict) -> None:
    """The Tune function trainable of one trial."""
    from ray import tune

    if _preempted_already(config):
        tune.report(final_result({"status": "preempted", "name": config["trial"], "steps": None}))
    elif config["workers"] == 1:
        from overparam_dist.train import run_trial

        _write_pid(config["pid_file"])
        summary = run_trial(_cfg_from_dict(config["cfg"]))
        tune.report(final_result(summary))
    else:
        _fit_worker_group(config)


def _fit_worker_group(config: dict) -> None:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    callback = TuneReportCallback()  # forwards the workers' final ray.train.report (rank 0's) to Tune
    queue = None
    try:  # the same Tune-side queue the callback feeds: rank 0 forwards each logged row through it
        from ray.train._internal.session import get_session

        queue = get_session()._get_or_create_inter_actor_queue()
    except Exception:
        pass  # per-step rows then reach Tune only through metrics.jsonl; the final result still does
    res = config["resources"]
    per_worker = _worker_resources(res, config["workers"])
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"cfg": config["cfg"], "pid_file": config["pid_file"], "queue": queue},
        scaling_config=ray.train.ScalingConfig(num_workers=config["workers"], use_gpu=res["gpus"] > 0,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=f"{config['trial']}-{secrets.token_hex(3)}", storage_path=config["train_storage"],
            failure_config=ray.train.FailureConfig(max_failures=config["max_failures"]),
            callbacks=[callback]),
    )
    trainer.fit()


def _train_worker(config: dict) -> None:
    """One Ray Train worker: run_trial joins the process group Train set up."""
    import ray.train

    from overparam_dist import sinks
    from overparam_dist.train import run_trial

    if ray.train.get_context().get_world_rank() == 0:
        _write_pid(config["pid_file"])
        queue = config.get("queue")
        if queue is not None:
            sinks.set_ray_reporter(lambda row: queue.put(row))
    try:
        summary = run_trial(_cfg_from_dict(config["cfg"]))
    finally:
        sinks.set_ray_reporter(None)
    ray.train.report(final_result(summary))  # every worker: Train V2's report is a barrier


# ---------------------------------------------------------------------------------------------- plans


FINISHED = "FINISHED"


class GridPlan:
    """Run these trials, in order."""

    def __init__(self, todo: list[Trial]):
        self.todo = list(todo)
        self.total = len(todo)

    def next_trial(self) -> Trial | str | None:
        return self.todo.pop(0) if self.todo else FINISHED

    def complete(self, name: str, summary: dict | None) -> None:
        pass

    def should_stop(self, name: str | None) -> bool:
        return False


def _searcher(plan, book: Book):
    from ray.tune.search import Searcher

    class PlanSearcher(Searcher):
        def __init__(self):
            super().__init__()
            self.names: dict[str, str] = {}

        def set_search_properties(self, metric, mode, config, **spec) -> bool:
            return True

        def suggest(self, trial_id: str):
            if preempt_requested(book.sweep):
                return Searcher.FINISHED  # preempted: no new trial; the running ones checkpoint and stop
            t = plan.next_trial()
            if t == FINISHED:
                return Searcher.FINISHED
            if t is None:
                return None
            self.names[trial_id] = t.name
            return trial_config(book.sweep, t)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            name = self.names.pop(trial_id, None)
            if name is None:
                return
            summary = json.loads(result[FINAL_KEY]) if (result and FINAL_KEY in result) else None
            if summary is not None and summary.get("status") == "preempted":
                summary = None  # interrupted: no evidence either way (--resume runs it again)
            plan.complete(name, summary)

    return PlanSearcher()


def trial_config(sweep: Sweep, t: Trial) -> dict:
    return {
        "trial": t.name,
        "cfg": to_dict(t.cfg),
        "workers": t.workers,
        "resources": dict(sweep.resources),
        "max_failures": sweep.max_failures,
        "pid_file": str(sweep.dir / PIDS_DIR / f"{t.name}.pid"),
        "train_storage": str(sweep.dir / "_ray" / "train"),
    }


def _callback(book: Book, every_s: float):
    from ray import tune

    def name_of(trial) -> str:
        return trial.config["trial"]

    class Progress(tune.Callback):
        def setup(self, **info):
            _reclaim_usr1()

        def on_trial_start(self, iteration, trials, trial, **info):
            book.started(name_of(trial))
            book.maybe_print(every_s)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            book.result(name_of(trial), result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            book.ended(name_of(trial))
            book.maybe_print(every_s)

        def on_trial_recover(self, iteration, trials, trial, **info):
            print(f"[{book.sweep.name}] trial {name_of(trial)} failed, retrying from its last checkpoint: "
                  f"{_trial_error(trial)}", file=book.out, flush=True)

        def on_trial_error(self, iteration, trials, trial, **info):
            err = _trial_error(trial)
            book.ended(name_of(trial), error=err)
            print(f"[{book.sweep.name}] trial {name_of(trial)} failed: {err}", file=book.out, flush=True)

        def on_step_end(self, iteration, trials, **info):
            book.maybe_print(every_s)

    return Progress()


def _trial_error(trial) -> str:
    """The last line of a trial's error (the exception), from Tune's trial record."""
    msg = getattr(trial, "error_msg", None)
    if msg:
        lines = [ln for ln in str(msg).strip().splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    path = getattr(trial, "error_file", None) or getattr(trial, "pickled_error_file", None)
    if path and os.path.isfile(str(path)):
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "unknown error"


def max_concurrent(sweep: Sweep, trials: list[Trial]) -> int:
    """As many trials at once as the cluster's resources hold (the largest trial decides)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if not trials:
        return 1
    need_cpu = max(trial_demand(t, sweep.resources)[0] for t in trials)
    need_gpu = max(trial_demand(t, sweep.resources)[1] for t in trials)
    for t in trials:
        c, g = trial_demand(t, sweep.resources)
        if c > cpus + 1e-9 or g > gpus + 1e-9:
            raise ConfigError(
                f"trial {t.name} needs {c:g} CPUs and {g:g} GPUs ({t.workers} processes x resources "
                f"{sweep.resources}), more than the cluster has ({cpus:g} CPUs, {gpus:g} GPUs); "
                "lower resources.cpus / resources.gpus or parallel.dp x parallel.tp")
    slots = math.floor(cpus / need_cpu + 1e-9)
    if need_gpu > 0:
        slots = min(slots, math.floor(gpus / need_gpu + 1e-9))
    return max(1, slots)


# --------------------------------------------------------------------------------------------- driver


@dataclass
class Outcome:
    sweep: Sweep
    results: Path
    states: dict[str, str]  # trial -> completed | diverged | failed | stopped | preempted | running (interrupted)
    skipped: list[str]  # finished before this run: not run again
    extra: dict[str, Any] = field(default_factory=dict)  # critical_width outputs
    book: Book | None = None
    preempted: bool = False  # SIGUSR1 stopped the sweep before all of its work was done

    @property
    def counts(self) -> dict[str, int]:
        c = {"running": 0, "completed": 0, "diverged": 0, "failed": 0, "stopped": 0, "preempted": 0}
        for s in self.states.values():
            c[s] = c.get(s, 0) + 1
        return c

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "failed"]


def prepare(sweep: Sweep, resume: bool) -> dict[str, dict]:
    """Check the sweep directory before Ray starts; return {trial: summary} of already finished trials."""
    from overparam_dist.train import check_run_dir

    sdir = sweep.dir
    if sdir.exists() and any(sdir.iterdir()) and not resume:
        raise ConfigError(f"sweep directory '{sdir}' exists: pass --resume to continue that sweep, "
                          "or give this one another name (name=...)")
    for t in sweep.trials:
        check_run_dir(t.cfg)  # a run directory holding another experiment: one line, nothing overwritten
    return {t.name: s for t in sweep.trials if (s := finished_summary(t)) is not None}


_preempt_signalled = False  # set by the SIGUSR1 handler of this process (the file is the flag the trials see)
_preempt_handler = None  # the SIGUSR1 handler while a sweep runs (Tune's own replaces it: see _callback.setup)


def preempt_requested(sweep: Sweep) -> bool:
    return _preempt_signalled or (sweep.dir / PREEMPT_FILE).exists()


@contextlib.contextmanager
def preemption_handler(sweep: Sweep) -> Iterator[None]:
    """While the sweep runs, SIGUSR1 (Slurm's --signal, forwarded by slurm/ray_sweep.sbatch, or `kill -USR1`)
    preempts it: create runs/<sweep>/.preempt. Only in the main thread (elsewhere the file alone works)."""
    global _preempt_signalled, _preempt_handler
    _preempt_signalled = False
    flag = sweep.dir / PREEMPT_FILE

    def handle(signum, frame) -> None:
        global _preempt_signalled
        _preempt_signalled = True
        try:
            flag.parent.mkdir(parents=True, exist_ok=True)
            flag.touch()
        except OSError:
            pass
        os.write(2, f"[{sweep.name}] SIGUSR1: preempting: running trials checkpoint and stop, no new trial "
                    f"starts\n".encode())

    try:
        previous = signal.signal(signal.SIGUSR1, handle)
    except ValueError:  # not the main thread
        yield
        return
    _preempt_handler = handle
    try:
        yield
    finally:
        _preempt_handler = None
        signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)


def _reclaim_usr1() -> None:
    """tune.run() installs its own SIGUSR1 handler (it ends the whole run at once, killing the trials without a
    checkpoint); put ours back. Called from the Tune callback's setup(), which runs after Tune's."""
    if _preempt_handler is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _preempt_handler)


def run_sweep(sweep: Sweep, *, address: str | None = None, resume: bool = False, progress_every: float = 10.0,
              out=None, num_cpus: int | None = None) -> Outcome:
    """Run (or continue) a sweep; results.csv is rewritten as each trial ends. Bad input raises ConfigError
    before anything is written or any Ray process starts."""
    out = out or sys.stdout
    done = prepare(sweep, resume)
    if resume:
        (sweep.dir / PREEMPT_FILE).unlink(missing_ok=True)  # a preempted run's flag: this run goes on
    with preemption_handler(sweep):
        return _run_sweep(sweep, done, address, resume, progress_every, out, num_cpus)


def _run_sweep(sweep: Sweep, done: dict[str, dict], address: str | None, resume: bool, progress_every: float,
               out, num_cpus: int | None) -> Outcome:
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and not ("ray" in sys.modules and _ray_connected()):
        _check_reachable(target)  # an unreachable cluster: one line, before anything is written

    book = Book(sweep, out)
    for name, summary in done.items():
        book.finished(name, summary, write=False)
    if sweep.kind == "critical_width":
        from .critical_width import CriticalWidthPlan

        plan: Any = CriticalWidthPlan(sweep, done)
    else:
        plan = GridPlan([t for t in sweep.trials if t.name not in done])
    book.scheduled = len(done) + plan.total if sweep.kind == "grid" else 0

    def start_outputs() -> None:
        sweep.dir.mkdir(parents=True, exist_ok=True)
        (sweep.dir / SWEEP_FILE).write_text(yaml.safe_dump(sweep.to_yaml_dict(), sort_keys=False))
        book.write()
        if done:
            print(f"[{sweep.name}] {len(done)} trial(s) already finished in {sweep.dir}/: not run again", file=out)

    if plan.total > 0 and not getattr(plan, "resolved", lambda: False)():
        with ray_session(address, num_cpus=num_cpus) as info:
            start_outputs()
            _run_tune(sweep, plan, book, info, progress_every, out)
    else:
        start_outputs()
    book.maybe_print(progress_every, force=True)
    results = book.write()
    unfinished = any(s == "preempted" for s in book.state.values()) or (
        not plan.resolved() if sweep.kind == "critical_width" else bool(plan.todo))
    outcome = Outcome(sweep, results, dict(book.state), sorted(done), book=book,
                      preempted=preempt_requested(sweep) and unfinished)
    if sweep.kind == "critical_width" and not outcome.preempted:
        from .critical_width import write_outputs

        outcome.extra = write_outputs(sweep, plan, out)
    return outcome


def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


def _run_tune(sweep: Sweep, plan, book: Book, info: RayInfo, progress_every: float, out) -> None:
    from ray import tune

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter is silent at verbose=0
    todo = sweep.trials if sweep.kind == "critical_width" else plan.todo
    slots = max_concurrent(sweep, todo)
    where = f"Ray at {info.address}" + (" (private, stopped at the end)" if info.embedded else "")
    what = (f"{plan.total} trial(s)" if sweep.kind == "grid" else
            f"critical-width search over {len(plan.cells)} cell(s) x {len(plan.widths)} widths")
    print(f"[{sweep.name}] {what}, up to {slots} at a time, on {where}", file=out)
    if info.dashboard_url:
        print(f"[{sweep.name}] Ray dashboard: {info.dashboard_url}", file=out, flush=True)

    searcher = _searcher(plan, book)

    def stop(trial_id: str, result: dict) -> bool:
        return plan.should_stop(searcher.names.get(trial_id))

    tuner = tune.Tuner(
        tune.with_resources(trainable, _placement),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=plan.total,
            max_concurrent_trials=slots,
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["trial"],
            trial_dirname_creator=lambda trial: trial.config["trial"],
        ),
        run_config=tune.RunConfig(
            name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(sweep.dir / "_ray" / "tune"),
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
            callbacks=[_callback(book, progress_every)],
            stop=stop if sweep.kind == "critical_width" else None,
            verbose=0,
        ),
    )
    tuner.fit()


def after_sweep(outcome: Outcome) -> None:
    """The end of every sweep: the local report (runs/<sweep>/report/) and the W&B summary run of the group.
    Best effort: a failing report is one warning, never a failed sweep."""
    from .report import report_sweep

    report_sweep(outcome.sweep.dir, wandb_group_run=True)


TABLE_COLUMNS = ("status", "steps", "train/loss", "train/acc", "drift/weight_rel", "ntk/rel_drift", "conv/steps_to_fit")


def trial_table(book: Book, limit: int = 40) -> str:
    """The trials and their final metrics, as the last thing the driver prints ('-' = not measured)."""
    rows = book.rows()
    width = max([len(r["trial"]) for r in rows] + [5])
    lines = [f"{'trial':<{width}}" + "".join(f"  {c:>17}" for c in TABLE_COLUMNS)]

    def fmt(v: Any) -> str:
        if v is None or v == "":
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    for r in rows[:limit]:
        lines.append(f"{r['trial']:<{width}}" + "".join(f"  {fmt(r.get(c)):>17}" for c in TABLE_COLUMNS))
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more trial(s) in results.csv")
    return "\n".join(lines)


def cmd_sweep(args) -> int:
    """`overparam sweep --config FILE [--resume] [--address ADDR] [--runs-dir DIR] [key=value ...]`."""
    sweep = load_sweep(args.config, args.overrides, runs_dir=args.runs_dir)
    try:
        outcome = run_sweep(sweep, address=args.address, resume=args.resume, progress_every=args.progress_every)
    except KeyboardInterrupt:
        print(f"overparam: sweep interrupted; results so far in {sweep.dir / RESULTS_FILE}; continue with "
              "the same command and --resume", file=sys.stderr)
        return 130
    if not outcome.preempted:
        after_sweep(outcome)
    print(trial_table(outcome.book))
    c = outcome.counts
    print(f"results: {outcome.results}  ({c['completed']} completed, {c['diverged']} diverged, "
          f"{c['failed']} failed" + (f", {c['preempted']} preempted" if c["preempted"] else "")
          + (f", {len(outcome.skipped)} finished earlier" if outcome.skipped else "") + ")")
    for key in ("critical_width", "fit"):
        if key in outcome.extra:
            print(f"{key}: {outcome.extra[key]}")
    missing = [t.name for t in sweep.trials if sweep.kind == "grid"
               and outcome.states.get(t.name) not in ("completed", "diverged", "failed")]
    if outcome.preempted:
        print(f"overparam: sweep preempted (SIGUSR1): {c['preempted']} trial(s) checkpointed and stopped, "
              f"no new trial started; continue with the same command and --resume", file=sys.stderr)
        return EXIT_PREEMPTED
    if outcome.failed:
        print(f"overparam: {len(outcome.failed)} trial(s) failed: {', '.join(outcome.failed)} "
              "(errors in results.csv; rerun with --resume to retry them)", file=sys.stderr)
        return 1
    if missing:
        print(f"overparam: sweep interrupted, {len(missing)} trial(s) not run; continue with --resume",
              file=sys.stderr)
        return 130
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run every trial of a sweep file on Ray (embedded, or a cluster with --address)")
    s.add_argument("--config", required=True, help="sweep YAML (configs/sweep/*.yaml)")
    s.add_argument("--address", default=None,
                   help="Ray cluster to use (HOST:6379, ray://HOST:10001 or auto); default: RAY_ADDRESS, "
                        "else a private local Ray started and stopped by this command")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are skipped, the others resume")
    s.add_argument("--runs-dir", default="runs", help="where runs/<sweep>/ goes (default: ./runs)")
    s.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    s.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep keys (name=, grid.KEY=[..], resources.cpus=, search.widths=[..]) or trial config keys")
    s.set_defaults(fn=cmd_sweep)
