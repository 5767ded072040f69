"""The `overparam` command. Bad input -> one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from overparam_dist.config import ConfigError, load_config
from overparam_dist.metrics import names
from overparam_dist.rundir import run_dir

EXIT_BAD_INPUT = 2


def _fail(msg: str) -> int:
    print(f"overparam: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: also one line, exit 2
        print(f"overparam: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def cmd_train(args: argparse.Namespace) -> int:
    # Everything up to "already finished" imports no torch, so a bad input answers in well under a second.
    from overparam_dist.data_files import check_available
    from overparam_dist.rundir import check_run_dir, check_unlocked, finished_summary

    cfg = load_config(args.config, args.overrides)
    if args.quiet:
        cfg.run.quiet = True
    if args.resolved and not args.print_config:
        return _fail("--resolved goes with --print-config (it adds what needs the model to the printed config)")
    if args.print_config:  # as Hydra's --cfg job: the resolved config, nothing run
        return _print_config(cfg, args.resolved)
    check_available(cfg)
    check_run_dir(cfg)
    check_unlocked(run_dir(cfg))  # before any process starts: one line, not a worker's traceback
    done = finished_summary(run_dir(cfg), cfg)
    if done is not None:
        print(f"already finished in {run_dir(cfg)}/: {done['status']} at step {done['steps']} of "
              f"{done['requested_steps']} (dp={done.get('dp')}, tp={done.get('tp')}); nothing was trained. Change "
              "train.steps, train.stop_at_fit, train.target_loss or train.target_ratio to continue it; to train it "
              "again under settings its identity leaves out (parallel.dp, parallel.tp, train.device), add "
              + (f"run.dir={run_dir(cfg)}-2" if cfg.run.dir else f"run.name={run_dir(cfg).name}-2")
              + " (a new trial beside it)")
        return 0
    from overparam_dist.footprint import check_fits_memory  # these two need torch: a meta model, CUDA's presence
    from overparam_dist.parallel.distributed import check_backend

    from .local import launch_trial

    check_backend(cfg)
    check_fits_memory(cfg)
    summary = launch_trial(cfg)
    if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) != "0":
        return 0  # under torchrun / srun every rank runs this: rank 0 reports
    out = run_dir(cfg)
    if summary["status"] == "preempted":
        print(f"preempted at step {summary['steps']} (checkpoint saved); rerun the same command to resume")
        print(f"outputs: {out}/")
        return 0
    loss = summary.get(names.TRAIN_LOSS)
    acc = summary.get(names.TRAIN_ACC)
    print(f"{summary['status']}: {summary['steps']} steps, train/loss {loss:.4g}"
          + (f", train/acc {acc:.3f}" if acc is not None else "") if loss is not None
          else f"{summary['status']} after {summary['steps']} steps")
    if summary.get(names.REGIME):
        flagged = " (outside the regime its metrics describe)" if summary[names.REGIME] in names.REGIME_FLAGGED else ""
        print(f"regime: {summary[names.REGIME]}{flagged}: {summary.get(names.REGIME_WHY)}")
    print(f"outputs: {out}/ (config.yaml, metrics.jsonl, summary.json, checkpoints/)")
    return 0


def _print_config(cfg, resolved: bool) -> int:
    """The config as YAML (every key, preset and overrides merged); with `resolved`, also the `derived:` facts
    a trial records at init (train.lr=auto's step, the per-layer steps, the data), computed here in one process.
    Those need the data and the whole model in this process: both are checked first, and nothing is printed
    unless everything can be."""
    from overparam_dist.config import to_yaml

    derived = None
    if resolved:
        import copy

        from overparam_dist.data_files import check_available
        from overparam_dist.footprint import check_fits_memory
        from overparam_dist.step_size import resolved_at_init

        check_available(cfg)
        here = copy.deepcopy(cfg)
        here.parallel.dp = here.parallel.tp = 1  # the unsharded model is built here, in one process
        check_fits_memory(here)
        derived = resolved_at_init(cfg)
    print(to_yaml(cfg), end="")
    if derived is not None:
        import yaml

        print(f"# --resolved added (computed from the model at init): {', '.join('derived.' + k for k in derived)}")
        print(yaml.safe_dump({"derived": derived}, sort_keys=False), end="")
    return 0


EPILOG = """\
Every config key, its default and what it allows: docs/reference/config.md, "Configuration reference" (generated
from the schema, overparam_dist/schema.py; `make docs` builds the documentation site). Flags and key=value
overrides mix in any order.

examples:
  overparam train model.width=1024 model.depth=2 --quiet
  overparam train --config configs/experiment/paper_fc.yaml parallel.dp=2 --print-config
  overparam sweep --config configs/sweep/quickstart.yaml train.steps=200
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("overparam-dist")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="overparam", description="Over-parameterization studies at cluster scale.", epilog=EPILOG,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"overparam {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one trial (spawns parallel.dp x parallel.tp local processes if needed)")
    t.add_argument("--config", help="YAML file merged over the defaults")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--print-config", action="store_true", help="print the resolved config as YAML; run nothing")
    t.add_argument("--resolved", action="store_true",
                   help="with --print-config: also compute what needs the model (train.lr=auto's step, ...)")
    t.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. model.width=1024 (every key: docs/reference/config.md)")
    t.set_defaults(fn=cmd_train)

    from .sweep import driver as sweep_cmd

    sweep_cmd.add_parser(sub)
    _add_submit(sub)
    _add_jobs(sub)
    from . import report as report_cmd

    report_cmd.register(sub)
    from . import presets

    presets.register(sub)
    return p


# `overparam submit TARGET ...`: each target module has add_submit_parser(targets), which adds the
# subcommand `TARGET` with its own arguments and sets `fn`. Add a target (e.g. "launcher.slurm") here.
SUBMIT_TARGETS = ("launcher.ray_jobs", "launcher.slurm")
# `overparam jobs status|logs|stop JOB_ID`: (backend name, module) in the order they are asked. Each module has
# owns_job_id(job_id) -> bool and jobs_command(action, job_id, args) -> int; the first that owns the id
# gets it (`--backend` picks one explicitly). Add e.g. ("slurm", "launcher.slurm") for numeric Slurm ids.
JOB_BACKENDS = (("ray", "launcher.ray_jobs"), ("slurm", "launcher.slurm"))


def _add_submit(sub) -> None:
    import importlib

    s = sub.add_parser("submit", help="submit to a cluster: `submit ray` (Ray Jobs) or `submit slurm` (sbatch)")
    targets = s.add_subparsers(dest="target", required=True, parser_class=_Parser, metavar="TARGET")
    for module in SUBMIT_TARGETS:
        importlib.import_module(module).add_submit_parser(targets)


def cmd_jobs(args: argparse.Namespace) -> int:
    import importlib

    backends = [(name, importlib.import_module(module)) for name, module in JOB_BACKENDS]
    if args.backend:
        chosen = [m for name, m in backends if name == args.backend]
    else:
        chosen = [m for _, m in backends if m.owns_job_id(args.job_id)]
    if not chosen:
        return _fail(f"no job backend ({', '.join(n for n, _ in backends)}) knows job id '{args.job_id}'")
    return chosen[0].jobs_command(args.action, args.job_id, args)


def _add_jobs(sub) -> None:
    j = sub.add_parser("jobs", help="follow a submitted job: status, logs, stop")
    j.add_argument("action", choices=("status", "logs", "stop"),
                   help="status: state, node, time, restarts, log; logs: the job's output; stop: cancel the job")
    j.add_argument("job_id", metavar="JOB_ID", help="a Ray job id (raysubmit_...) or a Slurm job id (a number)")
    j.add_argument("--backend", choices=[name for name, _ in JOB_BACKENDS], default=None,
                   help="which scheduler owns JOB_ID (default: guessed from the id)")
    j.add_argument("--address", default=None,
                   help="Ray dashboard URL http://HOST:8265 (default: the one the job was submitted to, "
                        "else RAY_ADDRESS)")
    j.add_argument("--follow", "-f", action="store_true", help="logs: keep printing until the job ends")
    j.set_defaults(fn=cmd_jobs)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line with flags and key=value overrides in any order: argparse's positional list stops
    at the first flag, so the key=value words left over after it join the subcommand's overrides, in order."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    words = [w for w in extra if "=" in w and not w.startswith("-")]
    unknown = [w for w in extra if w not in words]
    if unknown or (words and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or words)}")
    if words:
        args.overrides = [*args.overrides, *words]
    if getattr(args, "config", None):  # a preset name, or a path
        from .presets import resolve

        trial = args.command == "train" or getattr(args, "trial", False)
        try:
            args.config = resolve(args.config, "trial" if trial else "sweep")
        except ConfigError as exc:
            parser.exit(EXIT_BAD_INPUT, f"overparam: error: {exc}\n")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
    try:
        return args.fn(args)
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print("overparam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
