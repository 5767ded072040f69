"""The run-directory contract: the one place its file names, its identity check and its atomic write live.

    runs/<sweep>/<trial>/config.yaml     the resolved config, plus `derived:` facts (effective lr, data, world)
    runs/<sweep>/<trial>/metrics.jsonl   one JSON object per logged step (metric keys: metrics/names.py)
    runs/<sweep>/<trial>/summary.json    final metrics + status (completed | diverged | preempted)
    runs/<sweep>/<trial>/ntk_spectrum.json  the probe NTK's eigenvalues at init, at the end and of K_inf (or null)
    runs/<sweep>/<trial>/kernel_circle.json  with metrics.kernel_circle > 0: the NTK row Theta(x_0, x(gamma)) along a
                                         circle through x_0, at init and at the end, and K_inf's (or null)
    runs/<sweep>/<trial>/report/         the single-trial report (analysis/trial_report.py)
    runs/<sweep>/<trial>/checkpoints/    DCP checkpoints, step_<8 digits>/
    runs/<sweep>/<trial>/wandb/          offline W&B run files
    runs/<sweep>/results.csv             one row per trial (analysis/results.py writes and reads it)
    runs/<sweep>/sweep.yaml              the resolved sweep
    runs/<sweep>/identity.json           the resolved content of every sweep the directory holds, and its hash
    runs/<sweep>/report/                 PNG plots + index.html (+ claim.json: a reproduction's claim and findings)

A trial directory is "finished" when summary.json says completed or diverged for the same requested step count:
a rerun of that exact trial then returns the summary instead of training again.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Iterator

import yaml

from .config import Config, ConfigError, flatten, to_dict

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
SPECTRUM_FILE = "ntk_spectrum.json"
KERNEL_CIRCLE_FILE = "kernel_circle.json"  # Jacot et al. 2018's Figure 1 (metrics/kernel_circle.py)
CHECKPOINTS_DIR = "checkpoints"
WANDB_DIR = "wandb"
RESULTS_FILE = "results.csv"
SWEEP_FILE = "sweep.yaml"
IDENTITY_FILE = "identity.json"  # the sweep's identities (launcher/sweep/identity.py)
REPORT_DIR = "report"
CLAIM_FILE = "claim.json"
LOCK_FILE = ".lock"  # holds "<pid> <host>" of the process training in the directory, under an exclusive flock

# Every name the project writes inside a run (or sweep) directory: a symbolic link planted at one of them would
# send our writes, or a checkpoint rotation's deletes, into someone else's files, so it is refused (own_entries).
OWN_NAMES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, SPECTRUM_FILE, KERNEL_CIRCLE_FILE, CHECKPOINTS_DIR, WANDB_DIR,
             RESULTS_FILE, SWEEP_FILE, IDENTITY_FILE, REPORT_DIR, CLAIM_FILE, LOCK_FILE)

FINISHED = ("completed", "diverged")  # statuses of a trial that will not train further
# Keys whose change makes an existing run directory a different experiment.
IDENTITY_SECTIONS = ("seed", "model", "data", "train")
IDENTITY_EXEMPT = {"train.steps", "train.device", "train.stop_at_fit", "train.target_loss", "train.target_ratio",
                   "data.verify"}



def default_run_name(cfg: Config) -> str:
    m = cfg.model
    return f"{m.arch}-{m.param}-w{m.width}-d{m.depth}-n{cfg.data.n}-s{cfg.seed}"


def run_dir(cfg: Config) -> Path:
    """The trial's directory, resolved (symlinks followed, '..' removed) before anything checks or writes it: a
    path written as nothere/../userdir is userdir, and is checked as userdir."""
    path = Path(cfg.run.dir).expanduser() if cfg.run.dir else Path("runs") / (cfg.run.name or default_run_name(cfg))
    return path.resolve()

def atomic_write(path: Path, text: str | bytes) -> Path:
    """Write a file whole or not at all: a temporary sibling, fsync, then rename over the target.

    Readers (the report, a resuming driver, `tail -f`) never see a torn file, whatever kills the writer.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a link planted at the temporary name is removed, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode() if isinstance(text, str) else text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # a rename replaces a link at `path` itself: its target is never touched
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill mid-write leaves the old file, and no debris
        raise
    return path


def _identity(cfg_dict: dict) -> dict:
    flat = flatten({k: cfg_dict[k] for k in IDENTITY_SECTIONS if k in cfg_dict})
    return {k: v for k, v in flat.items() if k not in IDENTITY_EXEMPT}


def check_writable_dir(out: Path, what: str = "run directory") -> None:
    """One line, before anything is written, for a path that cannot become a directory we write into."""
    for part in out.parts:
        if len(part.encode()) > 255:
            raise ConfigError(f"{what} '{out}': the name '{part[:40]}...' is {len(part.encode())} bytes long, "
                              "more than a file name may be (255)")
    if out.is_symlink():
        raise ConfigError(f"{what} '{out}' is a symbolic link (to '{os.readlink(out)}'): the project writes only into "
                          "directories of its own, never through a link; remove it or choose another directory")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} '{out}': '{existing}' is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} '{out}': '{existing}' is not writable by this user "
                          "(permissions, or a read-only file system)")


def own_entries(directory: Path, what: str = "run directory") -> None:
    """One line for a symbolic link where the project writes inside `directory` (OWN_NAMES, and checkpoints/'s
    step_* entries): our files and folders are opened as ours or not at all, never followed."""
    if not directory.is_dir():
        return
    planted = [directory / name for name in OWN_NAMES if (directory / name).is_symlink()]
    ckpt = directory / CHECKPOINTS_DIR
    if ckpt.is_dir() and not ckpt.is_symlink():
        planted += [p for p in ckpt.iterdir() if p.is_symlink()]
    if planted:
        raise ConfigError(f"{what} '{directory}': '{planted[0]}' is a symbolic link (to '{os.readlink(planted[0])}'); "
                          "the project never writes through links in its own directories: remove it")


def empty_but_lock(directory: Path) -> bool:
    """True for a directory holding nothing, or only our lock file (what a refused or failed start leaves)."""
    return all(p.name == LOCK_FILE for p in directory.iterdir())


def check_run_dir(cfg: Config) -> None:
    """Refuse to reuse a run directory that holds a different experiment (nothing is overwritten)."""
    out = run_dir(cfg)
    check_writable_dir(out)
    own_entries(out)
    cfg_file = out / CONFIG_FILE
    if not cfg_file.is_file():
        if out.exists() and not empty_but_lock(out):
            raise ConfigError(f"run directory '{out}' exists and is not a run of ours; choose another run.dir")
        return
    try:
        old = yaml.safe_load(cfg_file.read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"run directory '{out}': its {CONFIG_FILE} cannot be read as YAML ({type(exc).__name__}): "
                          "it is not a run of ours as it stands; choose another run.dir") from None
    if not isinstance(old, dict):
        raise ConfigError(f"run directory '{out}': its {CONFIG_FILE} is a {type(old).__name__}, not a mapping: it is "
                          "not a run of ours; choose another run.dir")
    old.pop("derived", None)
    a, b = _identity(old), _identity(to_dict(cfg))
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            raise ConfigError(
                f"run directory '{out}' holds a different run ({key}: {a.get(key)!r} there, {b.get(key)!r} now); "
                "choose another run.name or run.dir"
            )


def stop_rules(cfg: Config) -> dict:
    """How a trial decides to stop: recorded in summary.json, compared on a rerun."""
    return {"steps": cfg.train.steps, "stop_at_fit": cfg.train.stop_at_fit, "target_loss": cfg.train.target_loss,
            "target_ratio": cfg.train.target_ratio}


def finished_summary(out: Path, cfg: Config) -> dict | None:
    """summary.json of the trial in `out` when it already finished under the same stopping rules, else None.

    A rerun with other rules (more steps, stop_at_fit off, a lower target_loss, ...) is not finished: it resumes
    from the final checkpoint and trains (or stops at once) under the new rules, and its summary says which.
    """
    path = Path(out) / SUMMARY_FILE
    if not (path.is_file() and (Path(out) / CONFIG_FILE).is_file()):
        return None
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict):
        return None
    rules = stop_rules(cfg)
    recorded = done.get("stop_rules") or {"steps": done.get("requested_steps")}
    if not isinstance(recorded, dict):
        return None
    if done.get("status") in FINISHED and all(recorded.get(k, v) == v for k, v in rules.items()):
        return done
    return None


def write_config(out: Path, cfg: Config, derived: dict) -> Path:
    return atomic_write(Path(out) / CONFIG_FILE, yaml.safe_dump({**to_dict(cfg), "derived": derived}, sort_keys=False))


def write_summary(out: Path, summary: dict) -> Path:
    return atomic_write(Path(out) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def write_spectrum(out: Path, step: int, spectrum: dict) -> Path:
    """{"step_end": the step of "end", "init": [...], "end": [...], "infinite": [...] or null}, ascending."""
    return atomic_write(Path(out) / SPECTRUM_FILE, json.dumps({"step_end": step, **spectrum}) + "\n")


def write_kernel_circle(out: Path, record: dict) -> Path:
    """{"gamma": [...], "init": [...], "end": [...] or null, "inf": [...] or null, "step_end": s, "width": m}."""
    return atomic_write(Path(out) / KERNEL_CIRCLE_FILE, json.dumps(record) + "\n")


NO_ROOM = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
           errno.EROFS: "the file system is read-only"}


@contextlib.contextmanager
def out_of_room_is_one_line(out: Path) -> Iterator[None]:
    """A full disk, an exceeded quota or a file system remounted read-only while a trial writes becomes one
    line (a ConfigError: the CLI exits 2). What was written before stays: the last complete checkpoint and
    metrics.jsonl up to it, so the same command resumes once there is room."""
    try:
        yield
    except BaseException as exc:  # DCP wraps each rank's OSError in a CheckpointException (a BaseException)
        cause = _room_error(exc)
        if cause is None:
            raise
        where = f" ('{cause.filename}')" if cause.filename else ""
        raise ConfigError(f"run directory '{out}': {NO_ROOM[cause.errno]}{where}; nothing earlier is lost: make "
                          "room and rerun the same command to resume from the last checkpoint") from None


def _room_error(exc: BaseException, depth: int = 0) -> OSError | None:
    """The OSError of a full or read-only disk in `exc`, its causes, or the per-rank failures DCP collects."""
    if isinstance(exc, OSError) and exc.errno in NO_ROOM:
        return exc
    if depth > 4:
        return None
    inner = [pair[0] for pair in getattr(exc, "failures", {}).values() if isinstance(pair, tuple) and pair]
    for e in (*inner, exc.__cause__, exc.__context__):
        if e is not None and (found := _room_error(e, depth + 1)) is not None:
            return found
    return None


class RunDirLocked(ConfigError):
    """Another live process trains in (or drives) this directory."""


@contextlib.contextmanager
def exclusive(directory: Path, what: str = "run directory") -> Iterator[None]:
    """Hold an exclusive OS lock (flock) on `directory` while the block runs; the second process gets one line
    naming the holder's PID and host. The kernel drops the lock when the holder dies, however it dies, so a
    killed or requeued trial takes it again at once. Directories this call creates are removed again if the
    block leaves nothing in them (a refused start leaves nothing behind)."""
    directory = Path(directory)
    outermost = None
    for parent in (directory, *directory.parents):
        if parent.exists():
            break
        outermost = parent
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            who = f"PID {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise RunDirLocked(f"{what} '{directory}' is in use by {who}; wait for it to finish, or stop it "
                               "(a killed process releases it at once)") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            if outermost is not None and empty_but_lock(directory):
                path.unlink(missing_ok=True)
                for d in (directory, *directory.parents):
                    with contextlib.suppress(OSError):
                        d.rmdir()
                    if d == outermost:
                        break
    finally:
        os.close(fd)  # releases the lock


def check_unlocked(directory: Path, what: str = "run directory") -> None:
    """The same one line as `exclusive`, now, if a live process holds the directory (nothing is created)."""
    if (directory / LOCK_FILE).is_file():
        with exclusive(directory, what):
            pass
