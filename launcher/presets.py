"""Config presets by name: `--config quickstart` or `--config experiment/paper_fc` resolve under configs/, and
`overparam presets` lists them. A path that exists is always taken as given."""

from __future__ import annotations

from pathlib import Path

from overparam_dist.config import ConfigError

from .sweep.spec import CONFIGS

# Where a bare name is looked for, per command: an experiment for a trial, a sweep file for a sweep.
SEARCH = {"trial": ("experiment", "sweep", "repro"), "sweep": ("sweep", "repro", "experiment")}


def resolve(name: str, kind: str) -> str:
    """`name` if it is a file, else configs/<name>.yaml, else configs/<dir>/<name>.yaml in SEARCH[kind] order."""
    if Path(name).is_file():
        return name
    stem = name[:-5] if name.endswith(".yaml") else name
    for where in ("", *SEARCH[kind]):
        candidate = (CONFIGS / where / f"{stem}.yaml").resolve()
        # A preset is a file under configs/: a name with '..' or a link out of it is not one
        if candidate.is_file() and candidate.is_relative_to(CONFIGS.resolve()):
            return str(candidate)
    raise ConfigError(f"--config '{name}': no such file, and no preset of that name under {CONFIGS}/ "
                      "(`overparam presets` lists them)")


def describe(path: Path) -> str:
    """A preset's one-line description: its first comment line."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def cmd_presets(args) -> int:
    for path in sorted(CONFIGS.rglob("*.yaml")):
        name = str(path.relative_to(CONFIGS).with_suffix(""))
        print(f"{name:40s} {describe(path)}")
    print("use: overparam train --config NAME | overparam sweep --config NAME (configs/sweep, configs/repro)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("presets", help="list the experiment and sweep presets under configs/ with a line on each")
    p.set_defaults(fn=cmd_presets)
