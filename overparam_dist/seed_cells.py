"""Which trials are the seeds of one cell, and whether they can train as one batched model (seeds.py) exactly as
each alone: torch-free, so a sweep groups its trials (launcher/sweep/seed_groups.py) without importing torch.

The seeds must differ in nothing but the seed and where their runs go, run in one process (no dp or tp), with the
eager forward in float32 or float64 arithmetic (no torch.compile, no bf16 autocast).
"""

from __future__ import annotations

import dataclasses

from .config import Config

PER_SEED_KEYS = ("seed", "run.dir", "run.name")  # what may differ between the seeds of one batch


def cell_key(cfg: Config) -> tuple:
    """The config without what PER_SEED_KEYS names: seeds with the same key are one cell. (dataclasses.asdict, not
    OmegaConf: a sweep groups every one of up to max_trials trials with it.)"""
    flat = dict(_flat(dataclasses.asdict(cfg)))
    for key in PER_SEED_KEYS:
        flat.pop(key)
    return tuple(sorted(flat.items()))


def _flat(d: dict, prefix: str = "") -> list[tuple[str, str]]:
    return [kv for k, v in d.items()
            for kv in (_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", repr(v))])]


def batch_reason(cfgs: list[Config]) -> str | None:
    """Why these configs cannot train as one batched model, exactly as each alone (None: they can)."""
    first = cfgs[0]
    if len({c.seed for c in cfgs}) < len(cfgs):
        return "two of them have the same seed"
    if any(cell_key(c) != cell_key(first) for c in cfgs[1:]):
        return f"they differ in more than {', '.join(PER_SEED_KEYS)}"
    if first.parallel.dp * first.parallel.tp > 1:
        return "parallel.dp x parallel.tp > 1 (batched seeds run in one process)"
    if first.train.compile:
        return "train.compile=true (the batched forward is eager)"
    if first.train.precision == "bf16":
        return "train.precision=bf16 (autocast is not batched over seeds)"
    return None
