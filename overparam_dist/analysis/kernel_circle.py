r"""Jacot, Gabriel & Hongler (2018)'s Figure 1 from a sweep: the NTK row Theta(x_0, x(gamma)) along a circle of inputs
(each trial's kernel_circle.json, metrics/kernel_circle.py), at init (dashed) and after training (solid), for the
smallest and the largest width, against the infinite-width kernel K_inf (black, dotted).

Seeds draw different data, so each seed's circle goes through a different x_0; the init distribution is rotation
invariant (fc), so the rows of all seeds estimate the same function of gamma and are averaged. The numbers a verdict
reads, per trial: how far the row moved in training and how far it starts from K_inf, both relative L2 norms over
gamma; the theory has both fall with width (like m^-1/2).
"""

from __future__ import annotations

import json

import numpy as np

from ..rundir import KERNEL_CIRCLE_FILE
from .plots import SERIES_COLORS, Panel, Series
from .results import WIDTH, SweepResults, Trial, label

REL_CIRCLE_MOVE = "rel_circle_move"  # |end - init| / |init|, L2 over gamma
INIT_GAP_CIRCLE = "init_gap_circle"  # |init - inf| / |inf|, L2 over gamma


def read_circle(t: Trial) -> dict | None:
    """A trial's kernel_circle.json, or None (no directory, no file, a torn or foreign file)."""
    if t.dir is None or not (t.dir / KERNEL_CIRCLE_FILE).is_file():
        return None
    try:
        data = json.loads((t.dir / KERNEL_CIRCLE_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("gamma") and data.get("init") else None


def _rel(a: list[float] | None, b: list[float] | None) -> float | None:
    """|a - b| / |b| (L2 over gamma), or None when either row is missing or |b| = 0."""
    if a is None or b is None or len(a) != len(b):
        return None
    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    norm = float(np.linalg.norm(b_))
    return float(np.linalg.norm(a_ - b_)) / norm if norm > 0 else None


def circle_values(t: Trial) -> dict[str, float | None] | None:
    """{rel_circle_move, init_gap_circle} of one trial (None values where a row is missing), or None without a file."""
    data = read_circle(t)
    if data is None:
        return None
    return {REL_CIRCLE_MOVE: _rel(data.get("end"), data["init"]), INIT_GAP_CIRCLE: _rel(data["init"], data.get("inf"))}


def circle_table(res: SweepResults) -> list[dict]:
    """One row per in-regime trial with the file: trial, width, seed and its circle values, by width then seed (what a
    reproduction checks falls with width)."""
    rows = []
    for t in sorted(res.in_regime(), key=lambda t: (t.width or 0, t.seed)):
        values = circle_values(t)
        if values is not None:
            rows.append({"trial": t.name, "width": t.width, "seed": t.seed, **values})
    return rows


def _mean(rows: list[list[float]]) -> list[float]:
    return np.mean(np.asarray(rows, dtype=float), axis=0).tolist()


def circle_panel(res: SweepResults) -> Panel | None:
    """The figure's one panel, or None when no in-regime trial has kernel_circle.json. Each mean series carries its
    seeds' rows in meta["per_seed"] ({seed: [(gamma, y), ...]})."""
    found = [(t, d) for t in res.in_regime() if t.width is not None and (d := read_circle(t)) is not None]
    if not found:
        return None
    widths = sorted({t.width for t, _ in found})
    chosen = [widths[0]] if len(widths) == 1 else [widths[0], widths[-1]]
    panel = Panel(title="NTK along a circle: init (dashed), end (solid), K∞ (dotted)", xlabel="γ",
                  ylabel="Θ(x_0, x(γ))")
    infs = []
    for i, w in enumerate(chosen):
        mine = [(t, d) for t, d in found if t.width == w]
        gamma = mine[0][1]["gamma"]
        same = [(t, d) for t, d in mine if len(d["gamma"]) == len(gamma)]  # one circle size per width
        color = SERIES_COLORS(i % 10)
        for key, style in (("init", "--"), ("end", "-")):
            rows = {t.seed: d[key] for t, d in same if d.get(key) is not None}
            if rows:  # per_seed as everywhere in figures.json: {seed: [(x, y), ...]}
                panel.series.append(Series(f"{label(WIDTH, w)}, {key}", gamma, _mean(list(rows.values())),
                                           meta={"line": True, "style": style, "color": color, "width": w,
                                                 "per_seed": {s: list(zip(gamma, r)) for s, r in rows.items()}}))
        infs += [(gamma, d["inf"]) for _, d in same if d.get("inf") is not None]
    if infs:
        gamma = infs[0][0]
        rows = [r for g, r in infs if len(g) == len(gamma)]
        panel.series.append(Series("K∞", gamma, _mean(rows), meta={"line": True, "style": ":", "color": "black"}))
    return panel


__all__ = ["INIT_GAP_CIRCLE", "REL_CIRCLE_MOVE", "circle_panel", "circle_table", "circle_values", "read_circle"]
