"""Distributed checkpoints (torch.distributed.checkpoint), written atomically.

Layout: <run.dir>/checkpoints/step_<N>/ holds the DCP shards plus `trainer_state.json`, which is
written last. A save goes to a hidden temporary directory that is renamed into place only when
complete, so an interrupted save never replaces (or masquerades as) the last good checkpoint.
DCP stores tensors by their global names and shapes (tensor-parallel shards are wrapped as DTensors,
see parallel/tensor_parallel.py), so a run saved at one (dp, tp) loads at another.

Only the model is saved: the optimizer is plain SGD without momentum, which has no state.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from .parallel.distributed import World
from .rundir import atomic_write

STATE_FILE = "trainer_state.json"
KEEP = 2  # completed checkpoints kept on disk


@contextmanager
def _quiet_single_process():
    # DCP warns that it "assumes single process" whenever no process group exists: that is intended.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    out = []
    if ckpt_root.is_dir():
        for p in ckpt_root.iterdir():
            if p.name.startswith("step_") and (p / STATE_FILE).is_file():
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    pass
    return sorted(out)


def latest(ckpt_root: Path) -> Path | None:
    dirs = _step_dirs(ckpt_root)
    return dirs[-1][1] if dirs else None


def save(ckpt_root: Path, step: int, model_state: dict[str, torch.Tensor], trainer_state: dict,
         world: World) -> Path:
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    if world.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    world.barrier()
    with _quiet_single_process():
        dcp.save({"model": model_state}, checkpoint_id=str(tmp))
    world.barrier()
    if world.is_main:
        atomic_write(tmp / STATE_FILE, json.dumps(trainer_state))
        if final.exists():  # same step saved before (a resumed run): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        for _, old in _step_dirs(ckpt_root)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    world.barrier()
    return final


def load(path: Path, model_state: dict[str, torch.Tensor]) -> dict:
    """Load the model state in place (into the tensors of `model_state`); return the trainer state."""
    with _quiet_single_process():
        dcp.load({"model": model_state}, checkpoint_id=str(path))
    with open(path / STATE_FILE) as f:
        return json.load(f)
