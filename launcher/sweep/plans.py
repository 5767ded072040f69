"""What a sweep runs, and in which order: the Plan protocol the Tune searcher drives, the grid, and the
critical-width search.

Critical-width search (`search: {kind: critical_width, widths: [...], k: 0}` in a sweep file).

For each cell of the other grid axes (e.g. data.n x model.depth) find m*(cell): the smallest width of
`search.widths` whose trial reaches the fit target within train.steps (100% train accuracy, or loss below
train.target_loss: summary `conv/steps_to_fit` is set), assuming that reaching it is monotone in the width.

The search is a parallel k-ary search over the width index (log2 width for power-of-two widths) that
fills the free trial slots: whenever Tune has a free slot, the cell with the largest unresolved stretch
of candidate widths gets a probe in the middle of that stretch (pending probes count as split points), so
with s free slots per cell each round splits the interval into s + 1 parts; `k` (>= 2) caps the probes in
flight per cell at k - 1 (k = 2 is a serial bisection), 0 leaves it to the free slots. Probes made useless
by a result (below a width that failed, above one that reached) are stopped.

Invariant per cell: candidates are indices lo..hi of the widths (hi = K: none reached so far). A probe at
j that reaches the target sets hi = j, one that does not sets lo = j + 1; the cell is resolved when
lo == hi. So m* = widths[hi] was probed and reached, and widths[hi - 1] (if any) was probed and did not.

Outputs: runs/<sweep>/critical_width.csv (one row per cell) and critical_width_fit.json: the power-law fit
log m* = c + a log n + b log L by least squares over the cells with an m*, with 95% confidence intervals
(Student t) where there are more cells than parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from overparam_dist.analysis.results import CRITICAL_WIDTH_FILE, CRITICAL_WIDTH_FIT_FILE, write_csv
from overparam_dist.metrics import names
from overparam_dist.rundir import atomic_write

from .seed_groups import describe, group_seeds
from .spec import Sweep, Trial

FINISHED = "FINISHED"  # next_trial(): the plan has nothing more to run (None: nothing right now, ask again)


class Plan(Protocol):
    total: int  # an upper bound on the trials it runs (Tune's num_samples)
    sized: bool  # True when it runs exactly `total` trials (the progress line then shows "done k/total")

    def next_trial(self) -> Trial | str | None: ...

    def complete(self, name: str, summary: dict | None) -> None: ...

    def should_stop(self, name: str | None) -> bool: ...

    def resolved(self) -> bool: ...  # all of its work is done

    def candidates(self) -> list[Trial]: ...  # every trial it may run (for the cluster's capacity)

    def describe(self) -> str: ...

    def outputs(self, out) -> dict[str, Any]: ...  # at the end: write the plan's own files, print its findings


class GridPlan:
    """Run these trials, in order (a group of seeds, seed_groups.py, is one of them)."""

    sized = True

    def __init__(self, todo: list[Trial]):
        self.todo = list(todo)
        self.total = len(todo)

    def next_trial(self) -> Trial | str | None:
        return self.todo.pop(0) if self.todo else FINISHED

    def complete(self, name: str, summary: dict | None) -> None:
        pass

    def should_stop(self, name: str | None) -> bool:
        return False

    def resolved(self) -> bool:
        return not self.todo

    def candidates(self) -> list[Trial]:
        return self.todo

    def describe(self) -> str:
        return describe(self.todo)

    def outputs(self, out) -> dict[str, Any]:
        return {}


def make_plan(sweep: Sweep, done: dict[str, dict]) -> Plan:
    """The plan of a sweep, given the trials that already finished (`done`, not run again)."""
    if sweep.kind == "critical_width":
        return CriticalWidthPlan(sweep, done)
    return GridPlan(group_seeds([t for t in sweep.trials if t.name not in done], sweep.batch_seeds))


# Cell axes the power law regresses on, with the exponent's name.
FIT_AXES = (("data.n", "a"), ("model.depth", "b"))


def reached(summary: dict | None) -> bool:
    """The trial fitted, inside the regime its width is measured in (a catapult or dead trial is no m*)."""
    return bool(summary) and summary.get("status") == "completed" and summary.get(names.CONV_STEPS_TO_FIT) is not None \
        and summary.get(names.REGIME) not in names.REGIME_FLAGGED


@dataclass
class Cell:
    point: dict[str, Any]  # values of the non-width grid axes
    trials: list[Trial]  # one per width, ascending
    lo: int = 0
    hi: int = 0  # set to K in __post_init__
    pending: set[int] = field(default_factory=set)
    outcome: dict[int, bool] = field(default_factory=dict)  # probed index -> reached

    def __post_init__(self):
        self.hi = len(self.trials)

    @property
    def resolved(self) -> bool:
        return self.lo >= self.hi

    def segments(self) -> list[tuple[int, int]]:
        """Maximal runs [a, b] of candidate indices that are neither probed nor pending."""
        top = self.hi - 1 if self.hi < len(self.trials) else len(self.trials) - 1
        segs, start = [], None
        for i in range(self.lo, top + 1):
            free = i not in self.pending and i not in self.outcome
            if free and start is None:
                start = i
            if not free and start is not None:
                segs.append((start, i - 1))
                start = None
        if start is not None:
            segs.append((start, top))
        return segs

    def record(self, idx: int, ok: bool) -> None:
        self.outcome[idx] = ok
        if ok and idx >= self.lo:
            self.hi = min(self.hi, idx)
        elif not ok and idx < self.hi:
            self.lo = max(self.lo, idx + 1)

    def useless(self, idx: int) -> bool:
        return idx < self.lo or (self.hi < len(self.trials) and idx > self.hi)


class CriticalWidthPlan:
    """The parallel k-ary search of every cell (see the module doc)."""

    sized = False  # how many trials it runs is known only at the end

    def __init__(self, sweep: Sweep, done: dict[str, dict]):
        self.sweep = sweep
        self.k = sweep.search["k"]
        self.widths = sweep.search["widths"]
        axes = [k for k in sweep.grid]
        cells: dict[tuple, Cell] = {}
        for t in sweep.trials:  # expanded in grid order with model.width last
            key = tuple(t.point[a] for a in axes)
            cells.setdefault(key, Cell({a: t.point[a] for a in axes}, []))
            cells[key].trials.append(t)
        self.cells = list(cells.values())
        for c in self.cells:
            c.__post_init__()
        self.index = {t.name: (c, i) for c in self.cells for i, t in enumerate(c.trials)}
        self.summaries: dict[str, dict | None] = {}
        self.done = dict(done)  # finished before this run: used as results without running them
        self.total = len(sweep.trials)  # an upper bound for Tune's num_samples

    def resolved(self) -> bool:
        self._use_cached()
        return all(c.resolved for c in self.cells)

    def candidates(self) -> list[Trial]:
        return self.sweep.trials

    def describe(self) -> str:
        return f"critical-width search over {len(self.cells)} cell(s) x {len(self.widths)} widths"

    def outputs(self, out) -> dict[str, Any]:
        return write_outputs(self.sweep, self, out)

    def _use_cached(self) -> bool:
        """Fold in finished trials that the search would probe next. True if anything changed."""
        changed = True
        any_change = False
        while changed:
            changed = False
            for c in self.cells:
                for a, b in c.segments():
                    for i in range(a, b + 1):
                        t = c.trials[i]
                        if t.name in self.done and i not in c.outcome:
                            self.summaries[t.name] = self.done[t.name]
                            c.record(i, reached(self.done[t.name]))
                            changed = any_change = True
                            break
                    if changed:
                        break
        return any_change

    def next_trial(self) -> Trial | str | None:
        self._use_cached()
        best, best_len = None, 0
        for c in self.cells:
            if c.resolved or (self.k and len(c.pending) >= self.k - 1):
                continue
            for a, b in c.segments():
                if b - a + 1 > best_len:
                    best, best_len = (c, (a + b) // 2), b - a + 1
        if best is None:
            if all(c.resolved for c in self.cells) and not any(c.pending for c in self.cells):
                return FINISHED
            return None
        cell, idx = best
        cell.pending.add(idx)
        return cell.trials[idx]

    def complete(self, name: str, summary: dict | None) -> None:
        cell, idx = self.index[name]
        cell.pending.discard(idx)
        self.summaries[name] = summary
        if summary is None:
            return  # stopped as useless, or failed: no evidence either way (a failure is retried by Tune)
        cell.record(idx, reached(summary))

    def should_stop(self, name: str | None) -> bool:
        if name is None or name not in self.index:
            return False
        cell, idx = self.index[name]
        return idx in cell.pending and cell.useless(idx)

    # --- results
    def rows(self) -> list[dict]:
        rows = []
        for c in self.cells:
            k = len(c.trials)
            found = c.resolved and c.hi < k
            row: dict[str, Any] = dict(c.point)
            row["m_star"] = self.widths[c.hi] if found else None
            row["status"] = ("found" if c.hi > 0 else "at_min") if found else (
                "none_reached" if c.resolved else "unresolved")
            row["trial"] = c.trials[c.hi].name if found else None
            s = self.summaries.get(row["trial"]) if found else None
            row["steps_to_fit"] = s.get(names.CONV_STEPS_TO_FIT) if s else None
            row["smaller_width"] = self.widths[c.hi - 1] if found and c.hi > 0 else None
            row["smaller_reached"] = c.outcome.get(c.hi - 1) if found and c.hi > 0 else None
            row["probes"] = len(c.outcome)
            row["probed_widths"] = json.dumps({str(self.widths[i]): ok for i, ok in sorted(c.outcome.items())})
            # The step each probe fitted at (null: not within the budget), so a smaller budget's m* can be read back
            row["probed_steps"] = json.dumps({str(self.widths[i]): (self.summaries.get(c.trials[i].name) or {}).get(
                names.CONV_STEPS_TO_FIT) for i in sorted(c.outcome)})
            row["budget"] = c.trials[0].cfg.train.steps
            rows.append(row)
        return rows


def fit_power_law(rows: list[dict], axes=FIT_AXES) -> dict[str, Any]:
    """log m* = c + sum_i e_i log x_i over the cells with an m*; 95% CIs when the residual has dof > 0."""
    import numpy as np

    pts = [r for r in rows if r.get("m_star")]
    used = [(key, sym) for key, sym in axes
            if key in (pts[0] if pts else {}) and len({r[key] for r in pts}) > 1
            and all(isinstance(r[key], (int, float)) and r[key] > 0 for r in pts)]
    out: dict[str, Any] = {"cells": len(pts), "axes": {sym: key for key, sym in used}}
    for key, sym in axes:
        if (key, sym) not in used:
            out[sym] = None
            out[f"{sym}_ci95"] = None
    if not pts or not used:
        out["note"] = "no cell axis among " + ", ".join(k for k, _ in axes) + " varies over cells with an m*"
        return out
    X = np.array([[1.0] + [math.log(r[key]) for key, _ in used] for r in pts])
    y = np.array([math.log(r["m_star"]) for r in pts])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    n, p = X.shape
    dof = n - p
    ci = [None] * p
    if dof > 0:
        from scipy import stats

        resid = y - X @ beta
        s2 = float(resid @ resid) / dof
        cov = s2 * np.linalg.pinv(X.T @ X)
        t = float(stats.t.ppf(0.975, dof))
        ci = [[float(beta[i] - t * math.sqrt(max(cov[i, i], 0.0))),
               float(beta[i] + t * math.sqrt(max(cov[i, i], 0.0)))] for i in range(p)]
    else:
        out["note"] = f"{n} cells for {p} parameters: no confidence interval"
    out["log_c"] = float(beta[0])
    for j, (_, sym) in enumerate(used, start=1):
        out[sym] = float(beta[j])
        out[f"{sym}_ci95"] = ci[j]
    out["dof"] = dof
    return out


def describe_fit(fit: dict) -> str:
    parts, notes = [], []
    for key, sym in FIT_AXES:
        letter = {"data.n": "n", "model.depth": "L"}[key]
        if fit.get(sym) is None:
            notes.append(f"{key} does not vary")
            continue
        ci = fit.get(f"{sym}_ci95")
        parts.append(f"{letter}^{sym}, {sym} = {fit[sym]:.2f}" + (f" (95% CI [{ci[0]:.2f}, {ci[1]:.2f}])" if ci
                                                                 else " (no CI: too few cells)"))
    if not parts:
        return "m* power law: not fitted (" + "; ".join(notes) + ")"
    return "m* ~ " + " * ".join(p.split(",")[0] for p in parts) + ": " + "; ".join(
        p.split(", ", 1)[1] for p in parts) + (f" [{'; '.join(notes)}]" if notes else "")


def write_outputs(sweep: Sweep, plan: CriticalWidthPlan, out) -> dict[str, Any]:
    rows = plan.rows()
    path = sweep.dir / CRITICAL_WIDTH_FILE
    columns = list(rows[0]) if rows else ["m_star"]
    write_csv(path, rows, columns)
    fit = fit_power_law(rows)
    atomic_write(sweep.dir / CRITICAL_WIDTH_FIT_FILE, json.dumps(fit, indent=2) + "\n")
    for r in rows:
        cell = ", ".join(f"{k}={r[k]}" for k in plan.cells[0].point) if plan.cells else ""
        m = r["m_star"] if r["m_star"] is not None else f"> {plan.widths[-1]}" \
            if r["status"] == "none_reached" else "?"
        print(f"[{sweep.name}] m*({cell}) = {m}  [{r['status']}, {r['probes']} probes]", file=out)
    line = describe_fit(fit)
    print(f"[{sweep.name}] {line}", file=out, flush=True)
    return {"critical_width": str(path), "fit": line, "rows": rows, "fit_params": fit}
