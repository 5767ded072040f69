"""The driver's ledger of a sweep's trials: their states and summaries, results.csv rewritten each time a trial
ends, the progress line printed while the sweep runs, and the table printed at its end."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from overparam_dist.analysis.results import write_results
from overparam_dist.config import flatten, to_dict
from overparam_dist.metrics import names

from .spec import Sweep

SUMMARY_KEY = "summary_json"  # the last Tune result of a trial carries its summary.json as JSON text
STATES = ("running", "completed", "diverged", "failed", "stopped", "preempted")


def count_states(states: dict[str, str]) -> dict[str, int]:
    c = dict.fromkeys(STATES, 0)
    for s in states.values():
        c[s] = c.get(s, 0) + 1
    return c


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
        """A Tune result of the trial: a logged row, or (with `summary`) its final summary."""
        summary = result.get(SUMMARY_KEY)
        if summary is not None:
            self.finished(name, json.loads(summary))
            return
        loss = result.get(names.TRAIN_LOSS)
        if isinstance(loss, (int, float)):
            self.loss[name] = float(loss)

    def finished(self, name: str, summary: dict, write: bool = True) -> None:
        self.summary[name] = summary
        self.state[name] = summary.get("status", "completed")
        loss = summary.get(names.TRAIN_LOSS)
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
        return write_results(self.sweep.dir, self.rows())

    def counts(self) -> dict[str, int]:
        return count_states(self.state)

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
        # Over finished trials only: a running trial's loss is still falling, and one just started would be "worst".
        final = {n: v for n, v in self.loss.items() if self.state.get(n) in ("completed", "diverged")}
        if final:
            best, worst = min(final, key=final.get), max(final, key=final.get)
            parts.append(f"loss best {final[best]:.3g} ({best}) worst {final[worst]:.3g} ({worst})")
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


TABLE_COLUMNS = ("status", "steps", names.TRAIN_LOSS, names.TRAIN_ACC, names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT,
                 names.CONV_STEPS_TO_FIT)


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
