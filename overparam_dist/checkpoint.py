"""Distributed checkpoints (torch.distributed.checkpoint), written atomically.

Layout: <run.dir>/checkpoints/step_<N>/ holds the DCP shards, `trainer_state.json`, and `manifest.json`
(the SHA-256 and size of every other file), written last. A save goes to a hidden temporary directory that
is renamed into place only when complete, so an interrupted save never replaces (or masquerades as) the last
good checkpoint. Before anything of a checkpoint is loaded or unpickled its manifest is verified; a bad or
incomplete one is one warning line naming it, and the previous one is used. The last `checkpoint.keep` stay.
DCP stores tensors by their global names and shapes (tensor-parallel shards are wrapped as DTensors,
see parallel/tensor_parallel.py), so a run saved at one (dp, tp) loads at another.

Only the model is saved: the optimizer is plain SGD without momentum, which has no state.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from .parallel.distributed import World
from .rundir import atomic_write

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
WRITER = "overparam-dist"  # the manifest's writer: informative; rotation goes by the manifest's schema


@contextmanager
def _quiet_single_process():
    # DCP warns that it "assumes single process" whenever no process group exists: that is intended.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _step_dirs(ckpt_root: Path) -> list[tuple[int, Path]]:
    """step_<N> directories of our own: real directories (never a link) under a real checkpoints/ directory."""
    out = []
    if ckpt_root.is_dir() and not ckpt_root.is_symlink():
        for p in ckpt_root.iterdir():
            if p.name.startswith("step_") and p.is_dir() and not p.is_symlink():
                try:
                    out.append((int(p.name[5:]), p))
                except ValueError:
                    pass
    return sorted(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(d: Path) -> list[Path]:
    """Every file (and link) under d but the manifest."""
    return sorted(p for p in d.rglob("*") if (p.is_file() or p.is_symlink()) and p.name != MANIFEST_FILE)


def _write_manifest(d: Path) -> None:
    files = {str(p.relative_to(d)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(d)}
    atomic_write(d / MANIFEST_FILE, json.dumps({"writer": WRITER, "files": files}, indent=1))


def _manifest_files(d: Path) -> dict | str:
    """The manifest's {relative path: {bytes, sha256}} when it is one by its schema, else why it is not: a mapping
    of plain relative paths without '..' to an integer size and a 64-hex-digit hash, listing trainer_state.json
    and every file of the checkpoint."""
    try:
        manifest = json.loads((d / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        return "no manifest"
    except (OSError, ValueError):
        return "unreadable manifest"
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return "the manifest's files are not a mapping"
    for rel, want in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or not parts or ".." in parts:
            return f"the manifest names {rel!r}, outside the checkpoint"
        if not (isinstance(want, dict) and type(want.get("bytes")) is int and isinstance(want.get("sha256"), str)
                and len(want["sha256"]) == 64):
            return f"the manifest's entry for {rel!r} is not {{bytes: integer, sha256: 64 hex digits}}"
    if STATE_FILE not in files:
        return f"the manifest lists no {STATE_FILE}"
    unlisted = sorted(str(p.relative_to(d)) for p in _files(d) if str(p.relative_to(d)) not in files)
    if unlisted:
        return f"the manifest does not list {unlisted[0]}"
    return files


def verify(d: Path) -> str | None:
    """Why checkpoint directory `d` cannot be trusted, or None when every file matches its manifest."""
    files = _manifest_files(d)
    if isinstance(files, str):
        return files
    for rel, want in files.items():
        p = d / rel
        if p.is_symlink() or not p.is_file():
            return f"{rel} is missing, or not a plain file"
        if p.stat().st_size != want.get("bytes"):
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {want.get('bytes')}"
        if _sha256(p) != want.get("sha256"):
            return f"{rel} does not match its SHA-256"
    return None


def latest(ckpt_root: Path, world: World) -> Path | None:
    """The newest checkpoint whose files all match their manifest (checked on rank 0, agreed by every rank)."""
    step = -1
    if world.is_main:
        for s, d in reversed(_step_dirs(ckpt_root)):
            reason = verify(d)
            if reason is None:
                step = s
                break
            print(f"overparam: warning: checkpoint {d} is unusable ({reason}); trying the one before it",
                  file=sys.stderr, flush=True)
    step = world.from_main(step)
    return None if step < 0 else ckpt_root / f"step_{step:08d}"


def save(ckpt_root: Path, step: int, model_state: dict[str, torch.Tensor], trainer_state: dict,
         world: World, keep: int) -> Path:
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp_step_{step:08d}"
    if world.is_main:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    world.barrier()
    try:
        with _quiet_single_process():
            dcp.save({"model": model_state}, checkpoint_id=str(tmp))
        world.barrier()
        if world.is_main:
            atomic_write(tmp / STATE_FILE, json.dumps(trainer_state))
            _write_manifest(tmp)  # last: a directory without a valid manifest is never trusted
            if final.exists():  # same step saved before (a resumed run): replace it whole
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in _step_dirs(ckpt_root)[:-keep]:
                if not isinstance(_manifest_files(old), str):  # only a checkpoint of ours, by its manifest
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        if world.is_main:  # a failed save (a full disk) frees what it took; the previous checkpoints stay
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    world.barrier()
    return final


def load(path: Path, model_state: dict[str, torch.Tensor]) -> dict:
    """Load the model state in place (into the tensors of `model_state`); return the trainer state.
    `path` comes from `latest`, which verified it."""
    with _quiet_single_process():
        dcp.load({"model": model_state}, checkpoint_id=str(path))
    with open(path / STATE_FILE) as f:
        return json.load(f)
