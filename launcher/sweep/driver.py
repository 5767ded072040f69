"""`overparam sweep`: run (or continue) a sweep. Checks everything it can before Ray starts, runs the plan on
Tune (tune.py), handles preemption and Ctrl-C, and writes the end-of-sweep report."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from overparam_dist.config import ConfigError
from overparam_dist.rundir import (
    RESULTS_FILE,
    SWEEP_FILE,
    atomic_write,
    check_unlocked,
    check_writable_dir,
    empty_but_lock,
    exclusive,
    own_entries,
)

from . import identity
from .cluster import check_reachable, ray_connected, ray_session
from .plans import make_plan
from .preemption import preempt_requested, preemption_handler
from .progress import Book, count_states, trial_table
from .seed_groups import check_batchable
from .spec import PREEMPT_FILE, Sweep, load_sweep

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: try again (with --resume)


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
        return count_states(self.states)

    @property
    def failed(self) -> list[str]:
        return [n for n, s in self.states.items() if s == "failed"]


def prepare(sweep: Sweep, resume: bool, address: str | None = None, extend: bool = False) -> dict[str, dict]:
    """Check the sweep directory before Ray starts; return {trial: summary} of already finished trials."""
    sdir = sweep.dir
    check_writable_dir(sdir, "sweep directory")
    own_entries(sdir, "sweep directory")
    if sdir.exists() and not empty_but_lock(sdir):  # read only: another sweep's directory is not touched at all
        if not (resume or extend):
            raise ConfigError(f"sweep directory '{sdir}' exists: pass --resume to continue that same sweep, or "
                              "give this one another name (name=...)")
        identity.check(sdir, sweep.to_yaml_dict(), extend)
    check_unlocked(sdir, "sweep directory")  # a --resume while the first driver still runs
    check_batchable(sweep)
    sweep.check_inputs(on_this_host=not (address or os.environ.get("RAY_ADDRESS") or ray_connected()))
    return {t.name: s for t in sweep.trials if (s := t.finished_summary()) is not None}


def run_sweep(sweep: Sweep, *, address: str | None = None, resume: bool = False, progress_every: float = 10.0,
              out=None, num_cpus: int | None = None, extend: bool = False) -> Outcome:
    """Run (or continue, or with `extend` add to) a sweep; results.csv is rewritten as each trial ends, keeping the
    rows of the directory's other trials. Bad input raises ConfigError before anything is written or any Ray
    process starts."""
    out = out or sys.stdout
    done = prepare(sweep, resume, address, extend)
    if resume or extend:
        (sweep.dir / PREEMPT_FILE).unlink(missing_ok=True)  # a preempted run's flag: this run goes on
    with exclusive(sweep.dir, "sweep directory"), preemption_handler(sweep):
        return _run_sweep(sweep, done, address, resume, progress_every, out, num_cpus)


def _run_sweep(sweep: Sweep, done: dict[str, dict], address: str | None, resume: bool, progress_every: float,
               out, num_cpus: int | None) -> Outcome:
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target and not ray_connected():
        check_reachable(target)  # an unreachable cluster: one line, before anything is written

    book = Book(sweep, out)
    for name, summary in done.items():
        book.finished(name, summary, write=False)
    plan = make_plan(sweep, done)
    # A group of seeds (seed_groups.py) is one Tune trial of several of the book's trials
    book.scheduled = len(done) + sum(len(t.members) or 1 for t in plan.candidates()) if plan.sized else 0

    def start_outputs() -> None:
        sweep.dir.mkdir(parents=True, exist_ok=True)
        if not identity.recorded(sweep.dir):  # the first sweep's file: an --extend never rewrites it
            atomic_write(sweep.dir / SWEEP_FILE, yaml.safe_dump(sweep.to_yaml_dict(), sort_keys=False))
        identity.record(sweep.dir, sweep.to_yaml_dict())
        book.write()
        if done:
            print(f"[{sweep.name}] {len(done)} trial(s) already finished in {sweep.dir}/: not run again", file=out)

    if plan.total > 0 and not plan.resolved():
        from .tune import max_concurrent, run_tune  # Ray is imported only when there is something to run

        with ray_session(address, num_cpus=num_cpus) as info:
            slots = max_concurrent(sweep, plan.candidates())  # a trial too big for the cluster: nothing written
            start_outputs()
            run_tune(sweep, plan, book, info, slots, progress_every, out)
    else:
        start_outputs()
    book.maybe_print(progress_every, force=True)
    results = book.write(final=True)
    unfinished = any(s == "preempted" for s in book.state.values()) or not plan.resolved()
    outcome = Outcome(sweep, results, dict(book.state), sorted(done), book=book,
                      preempted=preempt_requested(sweep) and unfinished)
    if not outcome.preempted:
        outcome.extra = plan.outputs(out)
    return outcome


def after_sweep(outcome: Outcome) -> None:
    """The end of every sweep: the local report (runs/<sweep>/report/) and the W&B summary run of the group.
    Best effort: a failing report is one warning, never a failed sweep."""
    from ..report import report_sweep

    report_sweep(outcome.sweep.dir, wandb_group_run=True)


def cmd_sweep(args) -> int:
    """`overparam sweep --config FILE [--quick] [--resume] [--address ADDR] [--runs-dir DIR] [key=value ...]`."""
    from .multirun import dry_run_table, sweep_args

    config, overrides = sweep_args(args.config, args.overrides)
    sweep = load_sweep(config, overrides, runs_dir=args.runs_dir, quick=args.quick)
    if args.dry_run:
        from .spec import trial_demand

        check_batchable(sweep)
        print(dry_run_table(sweep, trial_demand))
        return 0
    try:
        outcome = run_sweep(sweep, address=args.address, resume=args.resume, progress_every=args.progress_every,
                            extend=args.extend)
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
        partial = {n: step for n in missing if (step := outcome.book.partial_step(n)) is not None}
        parts = [f"{len(missing) - len(partial)} trial(s) not run"] if len(partial) < len(missing) else []
        parts += [f"{n} partial at step {step} of {outcome.book.by_name[n].cfg.train.steps}"
                  for n, step in partial.items()]
        print(f"overparam: sweep interrupted: {'; '.join(parts)}; continue with --resume", file=sys.stderr)
        return 130
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("sweep", help="run every trial of a sweep file on Ray (embedded, or a cluster with --address)")
    s.add_argument("--config", default=None,
                   help="sweep YAML (configs/sweep/*.yaml) or experiment YAML (the base of a multirun), a path or a "
                        "preset name; default: a multirun on the default experiment")
    s.add_argument("--dry-run", action="store_true", help="print the trials (processes, CPUs/GPUs, steps); run nothing")
    s.add_argument("--address", default=None,
                   help="Ray cluster to use (HOST:6379, ray://HOST:10001 or auto); default: RAY_ADDRESS, "
                        "else a private local Ray started and stopped by this command")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep: finished trials are skipped, the others resume")
    s.add_argument("--extend", action="store_true",
                   help="add this sweep's trials to the existing sweep of the same name, whose grid or overrides "
                        "differ: its finished trials and their rows are kept")
    s.add_argument("--runs-dir", default="runs", help="where runs/<sweep>/ goes (default: ./runs)")
    s.add_argument("--quick", action="store_true",
                   help="the file's small variant (its `quick:` keys), run as <name>-quick (every configs/repro/)")
    s.add_argument("--progress-every", type=float, default=10.0, help="seconds between progress lines")
    s.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep keys (name=, grid.KEY=[..], resources.cpus=, search.widths=[..]), trial config keys, "
                        "or KEY=a,b,c: a grid axis (multirun)")
    s.set_defaults(fn=cmd_sweep)
