"""The footer line under every report figure: which code drew it, from which config, over how many seeds. A figure
copied into a paper, a slide or a chat then still says where it came from."""

from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

from ..rundir import SWEEP_FILE
from .results import SweepResults

UNKNOWN = "unknown"


@lru_cache(maxsize=1)
def code_commit() -> str:
    """Short git hash of the checkout this package runs from, or "unknown" (an installed package, no git, a git that
    hangs on a slow file system): a report must never fail for want of it."""
    here = Path(__file__).resolve().parent
    if "site-packages" in here.parts:  # an installed copy: whatever repository encloses it is not its source
        return UNKNOWN
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else UNKNOWN


def file_hash(path: Path) -> str | None:
    """First 12 hex digits of the file's sha256, or None when it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def footer(config_file: Path, seeds: int, commit: str | None = None) -> str:
    """'code 1a2b3c4 · sweep.yaml sha256 0f1e2d3c4b5a · 3 seeds'."""
    digest = file_hash(config_file)
    config = f"{config_file.name} sha256 {digest}" if digest else f"no {config_file.name}"
    return f"code {commit or code_commit()} · {config} · {seeds} seed{'s' * (seeds != 1)}"


def sweep_footer(res: SweepResults, commit: str | None = None) -> str:
    """The footer of a sweep's figures: its sweep.yaml (a directory of plain runs has none) and its distinct seeds."""
    return footer(res.dir / SWEEP_FILE, len({t.seed for t in res.trials}), commit)
