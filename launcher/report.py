"""`overparam report RUN_DIR [--wandb --entity E --project P]` and `overparam wandb sync PATH`.

Wiring (launcher/cli.py, in build_parser after the other subcommands):

    from . import report as report_cmd
    report_cmd.register(sub)

End of a sweep (launcher/sweep.py, after_sweep):

    from .report import report_sweep
    report_sweep(outcome.sweep.dir, wandb_group_run=True)

Standalone (before the wiring, or for scripts): `python -m launcher.report report runs/<sweep>`.
Bad input raises ConfigError (one line; the CLI prints it and exits 2).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from overparam_dist.config import ConfigError

EXIT_NO_LOGIN = 2


# ----------------------------------------------------------------------------------------------- report


def report_sweep(sweep_dir: str | Path, wandb_group_run: bool = True, out=None):
    """The end-of-sweep hook: write runs/<sweep>/report/ and (wandb_group_run) log it to the sweep's W&B summary
    run. Never raises: a sweep that finished stays finished; a failure is one warning. Returns the LocalReport or
    None."""
    out = out or sys.stdout
    try:
        from overparam_dist.analysis.report import build_local_report

        rep = build_local_report(sweep_dir)
    except Exception as exc:  # noqa: BLE001 - the sweep's results are already written
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        warnings.warn(f"report not written for {sweep_dir}: {type(exc).__name__}: {msg}", stacklevel=2)
        return None
    print(f"report: {rep.index}", file=out)
    from overparam_dist.analysis.report import verdict_lines

    for line in verdict_lines(rep):
        print(line, file=out)
    if wandb_group_run:
        report_to_summary_run(rep, out)
    return rep


def report_to_summary_run(rep, out=None) -> None:
    """Log the report to the sweep's W&B summary run, and say what was logged (nothing when it is unchanged)."""
    from overparam_dist.analysis.wandb_report import log_summary_run

    logged = log_summary_run(rep)
    if logged is not None:
        what = (f"logged at step {logged.step}" if logged.step is not None
                else "unchanged since its last step, nothing logged")
        print(f"report: W&B summary run {logged.id} (group {rep.results.group}, under {rep.results.dir / 'wandb'}/): "
              f"{what}", file=out)


def cmd_report(args: argparse.Namespace) -> int:
    from overparam_dist.analysis.report import build_local_report, verdict_lines
    from overparam_dist.analysis.trial_report import build_trial_report, is_trial_dir

    if is_trial_dir(Path(args.run_dir)):
        if args.log_run or args.wandb:
            raise ConfigError("--log-run and --wandb take a sweep directory runs/<sweep>/, not a trial's")
        trial = build_trial_report(args.run_dir, args.out)
        print(f"report: {trial.index} ({len(trial.figures)} figures)")
        return 0
    rep = build_local_report(args.run_dir, args.out)
    print(f"report: {rep.index} ({len(rep.images)} figures)")
    for line in verdict_lines(rep):
        print(line)
    if args.log_run:
        report_to_summary_run(rep)
    if not args.wandb:
        return 0
    return _wandb_report(rep, args)


def _wandb_report(rep, args: argparse.Namespace) -> int:
    from overparam_dist.analysis.wandb_report import (
        SPEC_FILE,
        build_wandb_report,
        save_wandb_report,
        wandb_logged_in,
        write_spec,
    )

    res = rep.results
    entity = args.entity or res.wandb_setting("entity") or os.environ.get("WANDB_ENTITY")
    project = args.project or res.wandb_setting("project") or os.environ.get("WANDB_PROJECT")
    if not entity or not project:
        raise ConfigError("--wandb needs --entity and --project "
                          "(or wandb.entity / wandb.project in the trials' configs)")
    try:
        report = build_wandb_report(res, str(entity), str(project), title=args.title)
    except ImportError:
        raise ConfigError("--wandb needs wandb-workspaces: pip install wandb-workspaces") from None
    spec = write_spec(report, rep.dir / SPEC_FILE)
    if not wandb_logged_in():
        raise ConfigError(f"W&B report not saved: not logged in to W&B (run `wandb login` or set WANDB_API_KEY); "
                          f"its spec is in {spec}")
    try:
        url = save_wandb_report(report)
    except Exception as exc:  # noqa: BLE001 - network, permissions: one line, exit 1
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"overparam: error: W&B report not saved ({type(exc).__name__}: {msg}); its spec is in {spec}",
              file=sys.stderr)
        return 1
    print(f"W&B report: {url}")
    return 0


# ----------------------------------------------------------------------------------------------- sync


def offline_runs(path: str | Path) -> list[Path]:
    """Every offline W&B run directory (offline-run-<time>-<id>) under `path` (a sweep, a trial, a wandb/ folder or
    one run directory), oldest first within a run id so a resumed trial's pieces upload in order."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"'{p}' does not exist")
    if p.is_dir() and p.name.startswith("offline-run-"):
        found = [p]
    else:
        found = [d for d in p.rglob("offline-run-*") if d.is_dir() and d.parent.name == "wandb"]
    # A process killed before its W&B service wrote anything leaves no .wandb file (or only its 7-byte header):
    # nothing to upload; the resumed piece re-logged those rows.
    found = [d for d in found if any(f.stat().st_size > 7 for f in d.glob("run-*.wandb"))]
    return sorted(found, key=lambda d: (str(d.parent), d.name))


def _wandb_exe() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def cmd_wandb_sync(args: argparse.Namespace) -> int:
    runs = offline_runs(args.path)
    if not runs:
        raise ConfigError(f"no offline W&B runs under '{args.path}' (expected */wandb/offline-run-*)")
    from overparam_dist.analysis.wandb_report import wandb_logged_in

    if not args.dry_run and not wandb_logged_in():
        raise ConfigError("not logged in to W&B: run `wandb login` (or set WANDB_API_KEY) on a node with internet, "
                          "then rerun `overparam wandb sync`")
    cmd = _wandb_exe() + ["sync"]
    if args.entity:
        cmd += ["--entity", args.entity]
    if args.project:
        cmd += ["--project", args.project]
    if args.include_synced:
        cmd += ["--include-synced"]
    if args.dry_run:
        cmd += ["--dry-run"]
    cmd += [str(r) for r in runs]
    print(f"overparam: syncing {len(runs)} offline run director{'y' if len(runs) == 1 else 'ies'} with wandb sync",
          flush=True)
    return subprocess.run(cmd).returncode


# ----------------------------------------------------------------------------------------------- parser


def register(subparsers) -> None:
    """Add `report` and `wandb sync` to the `overparam` subcommands."""
    r = subparsers.add_parser("report", help="plots + index.html for a sweep (runs/<sweep>/report/) or one trial "
                                             "(runs/<trial>/report/); --wandb also builds a W&B Report")
    r.add_argument("run_dir", metavar="RUN_DIR", help="a sweep directory runs/<sweep>/ (results.csv + trial dirs), "
                                                      "or one trial's directory (metrics.jsonl)")
    r.add_argument("--out", default=None, help="output directory (default: RUN_DIR/report/)")
    r.add_argument("--log-run", action="store_true",
                   help="also log the figures and the results table to the sweep's W&B summary run "
                        "(job_type=summary in its group; offline unless wandb.mode/WANDB_MODE say otherwise)")
    r.add_argument("--wandb", action="store_true",
                   help="build a W&B Report over the sweep's W&B group and save it (needs a login); without one "
                        "its spec is written to report/wandb_report.json and the exit code is 2")
    r.add_argument("--entity", default=None, help="W&B entity of the report (default: the trials' wandb.entity)")
    r.add_argument("--project", default=None, help="W&B project (default: the trials' wandb.project)")
    r.add_argument("--title", default=None, help="W&B Report title")
    r.set_defaults(fn=cmd_report)

    w = subparsers.add_parser("wandb", help="W&B utilities: `wandb sync` of offline runs")
    wsub = w.add_subparsers(dest="wandb_command", required=True, metavar="COMMAND")  # parser class: w's
    s = wsub.add_parser("sync", help="upload the offline W&B runs of a sweep or trial (wraps `wandb sync`)")
    s.add_argument("path", metavar="PATH", help="runs/<sweep>/, a trial directory or a wandb/ folder")
    s.add_argument("--entity", default=None, help="override the W&B entity of every run")
    s.add_argument("--project", default=None, help="override the W&B project of every run")
    s.add_argument("--include-synced", action="store_true", help="upload runs already synced too")
    s.add_argument("--dry-run", action="store_true", help="list what would be uploaded, upload nothing")
    s.set_defaults(fn=cmd_wandb_sync)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors: one line, exit 2 (as the overparam CLI)
        print(f"overparam: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """`python -m launcher.report report RUN_DIR ...` / `python -m launcher.report wandb sync PATH`: the same
    subcommands without the rest of the CLI."""
    p = _Parser(prog="overparam")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    register(sub)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"overparam: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
