"""The `overparam` command. Bad input -> one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import sys
import warnings

from overparam_dist.config import ConfigError, load_config, run_dir

EXIT_BAD_INPUT = 2


def _fail(msg: str) -> int:
    print(f"overparam: error: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage errors: also one line, exit 2
        print(f"overparam: error: {message}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def cmd_train(args: argparse.Namespace) -> int:
    from overparam_dist.data import check_available
    from overparam_dist.train import check_run_dir

    from .local import launch_trial

    cfg = load_config(args.config, args.overrides)
    if args.quiet:
        cfg.run.quiet = True
    check_available(cfg)
    check_run_dir(cfg)
    summary = launch_trial(cfg)
    out = run_dir(cfg)
    loss = summary.get("train/loss")
    acc = summary.get("train/acc")
    print(f"{summary['status']}: {summary['steps']} steps, train/loss {loss:.4g}"
          + (f", train/acc {acc:.3f}" if acc is not None else "") if loss is not None
          else f"{summary['status']} after {summary['steps']} steps")
    print(f"outputs: {out}/ (config.yaml, metrics.jsonl, summary.json, checkpoints/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="overparam", description="Over-parameterization studies at cluster scale.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train one trial (spawns parallel.dp x parallel.tp local processes if needed)")
    t.add_argument("--config", help="YAML file merged over the defaults")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("overrides", nargs="*", metavar="key=value")
    t.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
