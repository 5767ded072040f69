"""Trial names: the short tags of the grid axes a trial differs in, such as w64-d2-s0."""

from __future__ import annotations

import re
from typing import Any

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
