"""A sweep's identity: what makes two runs of `overparam sweep` the same sweep, hashed into its directory.

The identity is the resolved content that decides which trials exist and what each trains: the base experiment, the
overrides (stop rules included), the grid, the search and the claim it reproduces. Operational knobs (resources,
retries, actor reuse, the grid cap) are not part of it. runs/<sweep>/identity.json holds every identity the
directory has taken: the first, and each one `--extend` added. A `--resume` whose identity is not among them is
refused in one line naming the first difference, with both ways out; nothing under the directory is written first.
A directory from before identities were kept is judged by its sweep.yaml.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from overparam_dist.config import ConfigError, flatten
from overparam_dist.rundir import IDENTITY_FILE, SWEEP_FILE, atomic_write

KEYS = ("base", "overrides", "grid", "search", "reproduces")  # of Sweep.to_yaml_dict


def content(resolved: dict[str, Any]) -> dict[str, Any]:
    """The identity's part of a resolved sweep (Sweep.to_yaml_dict), in plain JSON types."""
    return json.loads(json.dumps({k: resolved.get(k) for k in KEYS}, sort_keys=True, default=str))


def digest(part: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()


def recorded(sweep_dir: Path) -> list[dict[str, Any]]:
    """The identities the directory has taken, oldest first ([] for a new directory)."""
    path = sweep_dir / IDENTITY_FILE
    try:
        data = json.loads(path.read_text())
        parts = [p for p in data.get("sweeps", []) if isinstance(p, dict)] if isinstance(data, dict) else []
        if parts:
            return parts
    except (OSError, ValueError):
        pass
    try:  # a sweep directory written before identity.json: its sweep.yaml says what it was
        old = yaml.safe_load((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [content(old)] if isinstance(old, dict) else []


def first_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """'grid.model.depth: [1, 2] there, absent here' for the first key whose value differs."""
    a, b = flatten(old), flatten(new)
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            there = json.dumps(a[key]) if key in a else "absent"
            here = json.dumps(b[key]) if key in b else "absent"
            return f"{key}: {there} there, {here} here"
    return "nothing (the same content)"


def check(sweep_dir: Path, resolved: dict[str, Any], extend: bool) -> bool:
    """Before anything runs: ConfigError when the directory holds another sweep and `extend` is not given. True
    when this run adds a new identity (extend), False when it is one of the directory's own (or the directory is
    new)."""
    mine = content(resolved)
    known = recorded(sweep_dir)
    if not known or any(digest(p) == digest(mine) for p in known):
        return False
    if extend:
        return True
    raise ConfigError(f"sweep directory '{sweep_dir}' holds another sweep ({first_difference(known[-1], mine)}): give "
                      "this one another name (name=...), or pass --extend to add its trials to that sweep (every "
                      "finished trial and its row is kept)")


def record(sweep_dir: Path, resolved: dict[str, Any]) -> None:
    """Add this run's identity to the directory's (once)."""
    known = recorded(sweep_dir)
    mine = content(resolved)
    if not any(digest(p) == digest(mine) for p in known):
        known.append(mine)
    atomic_write(sweep_dir / IDENTITY_FILE, json.dumps({"sweeps": known, "sha256": [digest(p) for p in known]},
                                                       indent=1) + "\n")


def short_hash(resolved: dict[str, Any]) -> str:
    """Six hex digits of the identity: a multirun's default name carries them."""
    return digest(content(resolved))[:6]
