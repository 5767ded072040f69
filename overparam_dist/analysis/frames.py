"""A finished sweep as pandas DataFrames, for notebooks: `overparam_dist.analysis.load_sweep(path)`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from ..rundir import METRICS_FILE
from .results import load_sweep as load_results


class SweepFrames(NamedTuple):
    trials: "pandas.DataFrame"  # noqa: F821  one row per trial: results.csv (trial, status, config keys, summary)
    metrics: "pandas.DataFrame"  # noqa: F821  every trial's metrics.jsonl rows, with a `trial` column


def load_sweep(path: str | Path) -> SweepFrames:
    """Read `runs/<sweep>/`: its trials (results.csv, or the trial directories) and the long table of every
    trial's logged rows (one row per trial and logged step, the metric keys as columns)."""
    import pandas as pd

    results = load_results(path)
    trials = pd.DataFrame([t.row for t in results.trials], columns=results.columns)
    rows = []
    for t in results.trials:
        jsonl = t.dir / METRICS_FILE if t.dir is not None else None
        if jsonl is not None and jsonl.is_file():
            rows += [{"trial": t.name, **json.loads(line)} for line in jsonl.read_text().splitlines() if line.strip()]
    metrics = pd.DataFrame(rows)
    if not metrics.empty:
        metrics = metrics.sort_values(["trial", "step"], kind="stable").reset_index(drop=True)
    return SweepFrames(trials=trials, metrics=metrics)
