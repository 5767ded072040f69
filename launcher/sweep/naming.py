"""Names: a trial's, the short tags of the grid axes it differs in (w64-d2-s0), and a multirun's default, its axes and
a short hash of its identity (multirun-w-d-3f2a1c)."""

from __future__ import annotations

import re
from typing import Any

from .identity import short_hash

# Short tags for trial names: w64-d2-s0. Keys not listed use their last part (tau0.1); "" = value only.
NAME_TAGS = {
    "model.width": "w", "model.depth": "d", "seed": "s", "data.n": "n", "train.lr": "lr",
    "parallel.dp": "dp", "parallel.tp": "tp", "train.batch_size": "bs", "data.label_noise": "noise",
    "train.steps": "steps", "model.tau": "tau", "data.dim": "dim", "data.classes": "c",
    "model.param": "", "model.arch": "", "data.name": "", "data.target": "", "train.loss": "",
}


def _tag(key: str, value: Any) -> str:
    tag = NAME_TAGS.get(key, key.rsplit(".", 1)[-1])
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", f"{tag}{text}")


def trial_name(point: dict[str, Any], varying: list[str]) -> str:
    return "-".join(_tag(k, point[k]) for k in varying) or "trial"


def multirun_name(grid: dict[str, list], resolved: dict[str, Any]) -> str:
    """multirun-<axis tags>-<6 hex digits of the identity>, e.g. multirun-w-d-3f2a1c (multirun-3f2a1c without axes)."""
    tags = [NAME_TAGS.get(k) or k.rsplit(".", 1)[-1] for k in grid]
    return "-".join(["multirun", *[re.sub(r"[^A-Za-z0-9._]", "_", t) for t in tags][:4], short_hash(resolved)])
