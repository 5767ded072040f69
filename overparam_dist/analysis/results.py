"""results.csv, written and read in one place, and a finished sweep as plain Python data.

runs/<sweep>/results.csv has one row per trial: flattened config columns such as `model.width`, plus the
summary.json columns. Each trial's metrics.jsonl is read lazily.

Without results.csv (a directory of plain `overparam train` runs) the rows are rebuilt from each trial
directory's config.yaml + summary.json, in the same layout.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import Config, ConfigError, flatten, to_dict
from ..metrics import names
from ..rundir import CONFIG_FILE, METRICS_FILE, RESULTS_FILE, SUMMARY_FILE, SWEEP_FILE, atomic_write
from ..sinks import read_jsonl
from .claims import CLAIMS

CRITICAL_WIDTH_FILE = "critical_width.csv"
CRITICAL_WIDTH_FIT_FILE = "critical_width_fit.json"

WIDTH, DEPTH, SEED = "model.width", "model.depth", "seed"
# Config columns that differ per trial without being an experimental axis.
BOOKKEEPING = ("run.", "wandb.", "checkpoint.", "train.device", "parallel.backend")
SHORT = {"model.width": "m", "model.depth": "L", "data.n": "n", "seed": "seed", "model.param": "",
         "model.arch": "", "data.name": "", "train.lr": "lr", "data.label_noise": "noise", "model.tau": "tau",
         "train.batch_size": "bs", "data.target": "", "train.loss": ""}

_INT = re.compile(r"[-+]?\d+")


def config_keys() -> list[str]:
    """Every dotted config key of the schema (the config columns of results.csv)."""
    return list(flatten(to_dict(Config())))


def _schema_types() -> dict[str, type]:
    """Config column -> its schema type, from the defaults (None defaults: no fixed type)."""
    return {k: type(v) for k, v in flatten(to_dict(Config())).items() if v is not None}


_SCHEMA_TYPES = _schema_types()


# ------------------------------------------------------------------------------------------------- writing


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return ""
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return v


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """A CSV written atomically: None and non-finite floats as empty cells, lists and dicts as JSON."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({c: _csv_cell(r.get(c)) for c in columns})
    return atomic_write(path, buf.getvalue())


def write_results(sweep_dir: Path, rows: list[dict]) -> Path:
    """runs/<sweep>/results.csv: the union of the rows' columns in first-seen order, `error` last."""
    columns: list[str] = []
    for r in rows:
        columns.extend(c for c in r if c not in columns)
    if "error" in columns:
        columns.remove("error")
        columns.append("error")
    return write_csv(Path(sweep_dir) / RESULTS_FILE, rows, columns or ["trial", "status"])


def raw_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """results.csv's rows as the text of their cells ([] when it is missing or unreadable): rows written back
    through write_results come out as they went in."""
    try:
        with open(Path(sweep_dir) / RESULTS_FILE, newline="", encoding="utf-8") as f:
            return [{k: v for k, v in r.items() if k is not None} for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# ------------------------------------------------------------------------------------------------- reading


def parse_cell(text: str | None, column: str | None = None) -> Any:
    """A results.csv cell back to a value: '' -> None; a config column by its schema type (so a string
    config value such as run.name=64 stays a string); other columns: ints, floats, True/False, JSON, else text."""
    if text is None:
        return None
    t = text.strip()
    if t == "":
        return None
    kind = _SCHEMA_TYPES.get(column) if column is not None else None
    if kind is str:
        return text
    if kind is bool:
        return t in ("True", "true")
    if kind is float:
        try:
            return float(t)
        except ValueError:
            return text
    if _INT.fullmatch(t):
        return int(t)
    if t in ("True", "true"):
        return True
    if t in ("False", "false"):
        return False
    try:
        return float(t)
    except ValueError:
        pass
    if t[0] in "[{":
        try:
            return json.loads(t)
        except json.JSONDecodeError:
            pass
    return text


def number(v: Any) -> float | None:
    """A finite float, or None (missing, null, NaN, inf, text, bool)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class Trial:
    name: str
    row: dict[str, Any]  # the results.csv row (parsed): config columns + summary columns
    dir: Path | None  # runs/<sweep>/<trial>/ when it exists

    @property
    def status(self) -> str:
        return str(self.row.get("status") or "unknown")

    @property
    def width(self) -> int | None:
        """model.width, or None where the row's value is not an integer (a damaged results.csv: 'wide', nan)."""
        v = self.row.get(WIDTH)
        return v if type(v) is int else None

    @property
    def depth(self) -> int | None:
        v = self.row.get(DEPTH)
        return v if type(v) is int else None

    @property
    def seed(self) -> int:
        v = self.row.get(SEED)
        return v if type(v) is int else 0

    @property
    def flag(self) -> str | None:
        """The regime that puts this trial outside its metrics' regime (names.REGIME_FLAGGED: drawn hollow, left out of
        every fit and verdict; `rich` is data, the width laws measure how far it moved), else None."""
        regime = self.row.get(names.REGIME)
        if self.status in ("diverged", "partial"):  # partial: it trained only part of its steps (the sweep stopped)
            return self.status
        return regime if regime in names.REGIME_FLAGGED else None

    @cached_property
    def history(self) -> list[dict]:
        """metrics.jsonl rows ([] when the trial directory or the file is missing)."""
        if self.dir is None:
            return []
        return read_jsonl(self.dir / METRICS_FILE)

    def curve(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric over the logged steps, skipping missing / non-finite values."""
        xs, ys = [], []
        for r in self.history:
            v = number(r.get(key))
            if v is not None:
                xs.append(int(r["step"]))
                ys.append(v)
        return xs, ys

    def final(self, key: str) -> float | None:
        """The summary value (results.csv), else the last finite value in metrics.jsonl."""
        v = number(self.row.get(key))
        if v is not None:
            return v
        _, ys = self.curve(key)
        return ys[-1] if ys else None

    def initial(self, key: str) -> float | None:
        """The value at step 0 (metrics.jsonl)."""
        for r in self.history:
            if r.get("step") == 0:
                return number(r.get(key))
        return None


@dataclass
class SweepResults:
    dir: Path
    name: str
    columns: list[str]
    trials: list[Trial]
    critical_width: list[dict] | None = None  # critical_width.csv rows (parsed), when the sweep searched m*
    critical_width_fit: dict | None = None
    config_columns: list[str] = field(default_factory=list)
    reproduces: str | None = None  # the published claim the sweep file names (claims.py), from sweep.yaml

    @property
    def group(self) -> str:
        """The W&B group of the sweep's runs (wandb.group of its trials, else the sweep's name)."""
        for t in self.trials:
            g = t.row.get("wandb.group")
            if g:
                return str(g)
        return self.name

    def wandb_setting(self, key: str, default: Any = None) -> Any:
        for t in self.trials:
            v = t.row.get(f"wandb.{key}")
            if v not in (None, ""):
                return v
        return default

    def usable(self) -> list[Trial]:
        """Trials with a result to plot (completed or diverged, or anything that logged metrics)."""
        return [t for t in self.trials if t.status in ("completed", "diverged", "preempted", "partial") or t.history]

    def in_regime(self) -> list[Trial]:
        """The usable trials every fit and verdict rests on: those not flagged (Trial.flag)."""
        return [t for t in self.usable() if t.flag is None]

    def flagged(self) -> list[Trial]:
        return [t for t in self.usable() if t.flag is not None]

    def flag_note(self) -> str:
        """'' or one sentence: how many trials were left out of the fits and verdicts, and why."""
        out = self.flagged()
        if not out:
            return ""
        which = ", ".join(f"{t.name} ({t.flag})" for t in out)
        return (f"{len(out)} trial{'s' * (len(out) != 1)} outside the regime the metrics describe, drawn hollow and "
                f"left out of every fit and verdict: {which}.")

    @cached_property
    def axes(self) -> list[str]:
        """Config columns that vary over the trials (the sweep's experimental axes), bookkeeping excluded."""
        out = []
        for c in self.config_columns:
            if c.startswith(BOOKKEEPING) or c == "run.name":
                continue
            values = {json.dumps(t.row.get(c), sort_keys=True, default=str) for t in self.trials}
            if len(values) > 1:
                out.append(c)
        return out

    @property
    def widths(self) -> list[int]:
        return sorted({t.width for t in self.trials if t.width is not None})

    @property
    def depths(self) -> list[int]:
        return sorted({t.depth for t in self.trials if t.depth is not None})

    def series_axes(self) -> list[str]:
        """The axes that make a separate series in a plot against width: every varying axis except width and seed,
        depth first."""
        rest = [a for a in self.axes if a not in (WIDTH, SEED, DEPTH)]
        return ([DEPTH] if DEPTH in self.axes or self.depths else []) + rest

    def series_key(self, t: Trial) -> tuple:
        return tuple(t.row.get(a) for a in self.series_axes())

    def series_label(self, key: tuple) -> str:
        return ", ".join(label(a, v) for a, v in zip(self.series_axes(), key)) or "all"

    def by_series(self, trials: Iterable[Trial] | None = None) -> dict[tuple, list[Trial]]:
        out: dict[tuple, list[Trial]] = {}
        for t in trials if trials is not None else self.usable():
            out.setdefault(self.series_key(t), []).append(t)
        return dict(sorted(out.items(), key=lambda kv: tuple(_sortable(v) for v in kv[0])))


def label(axis: str, value: Any) -> str:
    tag = SHORT.get(axis, axis.rsplit(".", 1)[-1])
    return f"{tag}={value}" if tag else str(value)


def _sortable(v: Any) -> tuple:
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = [{k: parse_cell(v, k) for k, v in r.items() if k is not None} for r in reader]
            return list(reader.fieldnames or []), rows
    except UnicodeDecodeError as exc:
        raise ConfigError(f"'{path}' is not UTF-8 text (byte {exc.start}): not a results.csv we wrote") from None
    except csv.Error as exc:
        raise ConfigError(f"'{path}' is not a readable CSV file: {exc}") from None


def _rows_from_dirs(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    """No results.csv: one row per subdirectory holding config.yaml + summary.json (same layout)."""
    rows: list[dict] = []
    columns: list[str] = []
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        if not ((d / CONFIG_FILE).is_file() and (d / SUMMARY_FILE).is_file()):
            continue
        try:
            cfg = yaml.safe_load((d / CONFIG_FILE).read_text(errors="replace")) or {}
            summary = json.loads((d / SUMMARY_FILE).read_text(errors="replace"))
        except (OSError, yaml.YAMLError, ValueError):
            continue
        if not (isinstance(cfg, dict) and isinstance(summary, dict)):  # not a trial's files: skipped
            continue
        cfg.pop("derived", None)
        row: dict[str, Any] = {"trial": d.name, "status": summary.get("status")}
        row.update(flatten(cfg))
        row.update({k: v for k, v in summary.items() if k not in row})
        rows.append(row)
        columns.extend(c for c in row if c not in columns)
    return columns, rows


def load_sweep(sweep_dir: str | Path) -> SweepResults:
    """Read a sweep directory (runs/<sweep>/). A missing or empty directory is a ConfigError (one line)."""
    sdir = Path(sweep_dir)
    if not sdir.is_dir():
        raise ConfigError(f"'{sdir}' is not a directory (expected runs/<sweep>/ with results.csv)")
    csv_path = sdir / RESULTS_FILE
    if csv_path.is_file():
        columns, rows = _read_csv(csv_path)
    else:
        columns, rows = _rows_from_dirs(sdir)
    if not rows:
        raise ConfigError(f"'{sdir}' has no trials: no {RESULTS_FILE} rows and no trial directories with "
                          f"{CONFIG_FILE} + {SUMMARY_FILE}")
    trials = []
    for r in rows:
        name = str(r.get("trial") or r.get("run.name") or r.get("name") or f"trial{len(trials)}")
        d = sdir / name
        if not d.is_dir() and r.get("run.dir"):
            d = Path(str(r["run.dir"]))
        trials.append(Trial(name=name, row=r, dir=d if d.is_dir() else None))

    name, reproduces = sdir.resolve().name, None
    if (sdir / SWEEP_FILE).is_file():
        try:
            spec = yaml.safe_load((sdir / SWEEP_FILE).read_text(errors="replace")) or {}
        except (OSError, yaml.YAMLError):
            spec = {}
        if isinstance(spec, dict):
            name = spec.get("name") if isinstance(spec.get("name"), str) else name
            reproduces = spec.get("reproduces") if isinstance(spec.get("reproduces"), str) else None
    cw = None
    if (sdir / CRITICAL_WIDTH_FILE).is_file():
        cw = _read_csv(sdir / CRITICAL_WIDTH_FILE)[1]
    fit = None
    if (sdir / CRITICAL_WIDTH_FIT_FILE).is_file():
        try:
            fit = json.loads((sdir / CRITICAL_WIDTH_FIT_FILE).read_text())
        except json.JSONDecodeError:
            fit = None
    keys = set(config_keys())
    return SweepResults(dir=sdir, name=str(name), columns=columns, trials=trials, critical_width=cw,
                        critical_width_fit=fit, config_columns=[c for c in columns if c in keys],
                        reproduces=reproduces if reproduces in CLAIMS else None)
