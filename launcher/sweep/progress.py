"""The driver's ledger of a sweep's trials: their states and summaries, results.csv rewritten each time a trial
ends, the progress shown while the sweep runs, and the table printed at its end.

Progress on a terminal is a live table, redrawn in place about once a second: one row per running trial (step
of steps, loss, steps/s), the counts and the sweep's ETA. When the output is not a terminal (a log file, Ray
Jobs, Slurm) it is one plain line at a time, without escape codes.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from overparam_dist.analysis.results import raw_rows, write_results
from overparam_dist.config import flatten, to_dict
from overparam_dist.metrics import names
from overparam_dist.rundir import METRICS_FILE
from overparam_dist.sinks import read_jsonl

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
        self.step: dict[str, int] = {}  # latest logged step of a running trial
        self.first: dict[str, tuple[float, int]] = {}  # (time, step) of a running trial's first result
        self.live = _is_terminal(self.out)
        self._drawn = 0  # lines of the live table now on the terminal
        self.kept: list[dict] | None = None  # results.csv rows of trials outside this sweep, read at the first write

    def __getstate__(self):  # Tune pickles its searcher and callbacks (which hold the book): not the stream
        return {k: v for k, v in self.__dict__.items() if k != "out"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.out = sys.stdout
        self.live = _is_terminal(self.out)

    # --- events
    def started(self, name: str) -> None:
        self.state[name] = "running"
        self.step.pop(name, None)
        self.first.pop(name, None)

    def result(self, name: str, result: dict) -> None:
        """A Tune result of the trial: a logged row, or (with `summary`) its final summary."""
        summary = result.get(SUMMARY_KEY)
        if summary is not None:
            self.finished(name, json.loads(summary))
            return
        loss = result.get(names.TRAIN_LOSS)
        if isinstance(loss, (int, float)):
            self.loss[name] = float(loss)
        step = result.get("step")
        if isinstance(step, int):
            self.step[name] = step
            self.first.setdefault(name, (time.time(), step))

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
    def partial_step(self, name: str) -> int | None:
        """The last logged step of a trial this run did not see end, when it trained at all (its metrics.jsonl)."""
        rows = read_jsonl(self.sweep.dir / name / METRICS_FILE)
        return rows[-1]["step"] if rows else None

    def rows(self, final: bool = False) -> list[dict]:
        """results.csv's rows: every trial that ended and, at the end of the run (`final`), every one that trained
        part of its steps (`partial`, with the step it reached). Only then: while the sweep runs, reading every
        unfinished trial's metrics.jsonl each time one trial ends would grow with the square of the sweep."""
        rows = []
        for t in self.sweep.trials:
            if t.name not in self.state or self.state[t.name] == "running":
                step = self.partial_step(t.name) if final else None
                if step is not None:
                    rows.append({"trial": t.name, "status": "partial", **flatten(to_dict(t.cfg)), "steps": step,
                                 "requested_steps": t.cfg.train.steps})
                continue
            s = self.summary.get(t.name, {})
            row = {"trial": t.name, "status": self.state[t.name]}
            row.update(flatten(to_dict(t.cfg)))
            row.update({k: v for k, v in s.items() if k not in row and k != "status"})
            if t.name in self.error:
                row["error"] = self.error[t.name]
            rows.append(row)
        return rows

    def write(self, final: bool = False) -> Path:
        """results.csv: this sweep's rows (rows(final)), after the rows the file already held for trials outside
        this sweep (an --extend keeps the first sweep's; a plain run has none)."""
        mine = self.rows(final)
        if self.kept is None:
            self.kept = [r for r in raw_rows(self.sweep.dir) if r.get("trial") not in self.by_name]
        return write_results(self.sweep.dir, self.kept + mine)

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

    def rate(self, name: str) -> float | None:
        """Steps per second of a running trial since its first logged row."""
        if name not in self.first or name not in self.step:
            return None
        t0, s0 = self.first[name]
        dt = time.time() - t0
        return (self.step[name] - s0) / dt if dt > 0 and self.step[name] > s0 else None

    def eta_s(self) -> float | None:
        """Seconds left: the steps still to run (running trials' rest, pending trials whole) over the running
        trials' summed steps/s. None before any rate is known, or for a search (its size is not known)."""
        running = [n for n, s in self.state.items() if s == "running"]
        rates = [r for r in map(self.rate, running) if r]
        if not self.scheduled or not rates:
            return None
        left = sum(max(0, self.by_name[n].cfg.train.steps - self.step.get(n, 0)) for n in running)
        c = self.counts()
        pending = max(0, self.scheduled - sum(c.values()))
        if pending:
            known = [t.cfg.train.steps for t in self.sweep.trials if t.name not in self.state]
            left += pending * (sum(known) / len(known) if known else 0)
        return left / sum(rates)

    def table(self) -> list[str]:
        """The live table: the running trials, then the progress line with the ETA."""
        running = [n for n in self.by_name if self.state.get(n) == "running"]
        width = max([len(n) for n in running] + [5])
        lines = [f"{'trial':<{width}}  {'step/steps':>13}  {'loss':>10}  {'steps/s':>8}"]
        for n in running:
            steps = self.by_name[n].cfg.train.steps
            at = f"{self.step[n]}/{steps}" if n in self.step else f"-/{steps}"
            loss, rate = self.loss.get(n), self.rate(n)
            lines.append(f"{n:<{width}}  {at:>13}  {f'{loss:.4g}' if loss is not None else '-':>10}  "
                         f"{f'{rate:.1f}' if rate else '-':>8}")
        eta = self.eta_s()
        lines.append(self.line() + f" | ETA {_clock(eta) if eta is not None else '?'}")
        return lines

    def maybe_print(self, every_s: float, force: bool = False) -> None:
        """Not a terminal: a progress line when the counts change (at most once a second) and every `every_s`
        seconds. A terminal: the live table, redrawn at most once a second."""
        now = time.time()
        key = json.dumps(self.counts())
        if self.live:
            if force or now - self._last_print >= 1.0:
                self._erase()
                lines = self.table()
                self.out.write("\n".join(lines) + "\n")
                self.out.flush()
                self._drawn, self._last_print = len(lines), now
            return
        if force or (key != self._last_line and now - self._last_print >= 1.0) or now - self._last_print >= every_s:
            print(self.line(), file=self.out, flush=True)
            self._last_line, self._last_print = key, now

    def say(self, message: str) -> None:
        """A message that stays (a trial failed or is retried): above the live table, which is drawn again."""
        self._erase()
        print(message, file=self.out, flush=True)
        self._last_print = 0.0

    def _erase(self) -> None:
        if self.live and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")  # to the table's first line, then clear to the end
            self._drawn = 0


def _is_terminal(out) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


TABLE_COLUMNS = ("status", "steps", names.TRAIN_LOSS, names.TRAIN_ACC, names.DRIFT_WEIGHT_REL, names.NTK_REL_DRIFT,
                 names.CONV_STEPS_TO_FIT)


def trial_table(book: Book, limit: int = 40) -> str:
    """The trials and their final metrics, as the last thing the driver prints ('-' = not measured)."""
    rows = book.rows(final=True)
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
