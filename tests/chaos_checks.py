"""The invariants of a chaos run (issue 28), shared by tests/test_chaos.py and bench/chaos.py.

After a sweep survived its faults, every trial (a seed's run directory) must have: finished exactly once (its
completed summary.json written once and never again, its W&B run's last summary completed); each logged step once
in its metrics.jsonl, the same steps and values as an unfaulted run of the same trial (1e-6), final metrics too; a
W&B offline history, merged over the pieces its restarts wrote, equal to the JSONL; one completed row in
results.csv.
No process of the run may be left, nor a port it listened on.

Every process a chaos run starts carries TAG_ENV=<tag> in its environment (inherited by Ray's workers, the
trials' local processes and W&B's service, whatever they rename themselves to): that is how they are found.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from overparam_dist.analysis.results import raw_rows
from overparam_dist.rundir import METRICS_FILE, SUMMARY_FILE
from overparam_dist.sinks import read_jsonl, wandb_records

TAG_ENV = "OVERPARAM_CHAOS_TAG"
TOL = 1e-6  # faulted against unfaulted (a dp=2 all-reduce may sum in another order)
SKIP_PREFIXES = ("time/",)  # measured, not computed: differ between any two runs
SKIP_KEYS = {"wall_s", "resumed_from_step"}


# ------------------------------------------------------------------------------------------- processes, ports

def tagged_pids(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment holds TAG_ENV=tag."""
    needle = f"{TAG_ENV}={tag}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if needle in (d / "environ").read_bytes().split(b"\0") and not _zombie(int(d.name)):
                out.append(int(d.name))
    return out


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def alive(pid: int) -> bool:
    return not _zombie(pid)


def cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes()[:200].decode(errors="replace").replace("\0", " ").strip()
    return "?"


def ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, by /proc parent links."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            children.setdefault(ppid(int(d)), []).append(int(d))
    tree, todo = [], [root]
    while todo:
        tree.append(pid := todo.pop())
        todo += children.get(pid, [])
    return tree


def kill(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def teardown_leftovers(tag: str, timeout: float = 90) -> list[str]:
    """Wait for every process of the run to be gone; returns those still there (command lines)."""
    deadline = time.time() + timeout
    while (left := [p for p in tagged_pids(tag) if alive(p)]) and time.time() < deadline:
        time.sleep(0.5)
    return [f"{p} {cmdline(p)}" for p in left]


def _hex_addr(text: str) -> str:
    """/proc/net/tcp{,6}'s address (host-order 32-bit words in hex) -> its text form ('::1', '127.0.0.1')."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    ip6 = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(ip6.ipv4_mapped or ip6)


def listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket on the host."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A":  # LISTEN
                    addr, port = f[1].split(":")
                    out[int(f[9])] = (_hex_addr(addr), int(port, 16))
    return out


def listeners_of(pids: list[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of the listening sockets the processes `pids` hold."""
    socks = listening()
    out = []
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and (inode := int(link[8:-1])) in socks:
                        out.append((pid, *socks[inode]))
    return out


def loopback(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def tree_snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def code_stamp() -> dict[str, int]:
    """mtime of every source file a trial runs: the reference and the faulted run must run the same code."""
    root = Path(__file__).resolve().parents[1]
    return {str(p): p.stat().st_mtime_ns for d in ("overparam_dist", "launcher") for p in (root / d).rglob("*.py")}


# ------------------------------------------------------------------------------------------------- W&B pieces

def _items(items) -> dict:
    out: dict = {}
    for it in items:
        path = list(it.nested_key) or [it.key]
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = json.loads(it.value_json)
    return out


@dataclass
class Piece:
    """One process's offline W&B file of a trial: its history rows and its final summary."""
    path: Path
    history: list[tuple[int, dict]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def wandb_pieces(run_dir: Path) -> list[Piece]:
    """The trial's offline pieces, oldest first (one per process that trained it)."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"), key=lambda f: (f.parent.name, f.stat().st_ctime))
    pieces = []
    for f in files:
        p = Piece(f)
        for rec in wandb_records(f):
            kind = rec.WhichOneof("record_type")
            if kind == "history":
                p.history.append((int(rec.history.step.num), _items(rec.history.item)))
            elif kind == "summary":
                p.summary.update(_items(rec.summary.update))
        pieces.append(p)
    return pieces


def merged_history(pieces: list[Piece]) -> dict[int, dict]:
    """The run's history as W&B keeps a resumed run's: a step at or below the last one it has is dropped (a killed
    process may have logged rows after the checkpoint its successor resumed from, and they are logged again)."""
    out: dict[int, dict] = {}
    last = -1
    for p in pieces:
        for step, item in p.history:
            if step > last:
                out[step] = item
                last = step
    return out


# ------------------------------------------------------------------------------------------------- invariants

def _same(a, b, tol: float) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(abs(a), abs(b)) + 1e-12


def _compared(d: dict) -> dict:
    return {k: v for k, v in d.items() if k not in SKIP_KEYS and not k.startswith(SKIP_PREFIXES)}


def diff(got: dict, want: dict, tol: float = TOL) -> list[str]:
    """Keys whose values differ (beyond tol) or that one side lacks, ignoring measured times."""
    got, want = _compared(got), _compared(want)
    keys = sorted(set(got) | set(want))
    return [f"{k}: {got.get(k, '<missing>')!r} != {want.get(k, '<missing>')!r}" for k in keys
            if k not in got or k not in want or not _same(got[k], want[k], tol)]


def summary_stamp(run_dir: Path) -> tuple | None:
    """(inode, mtime, SHA-256) of a completed summary.json, or None: a rewrite changes it."""
    path = run_dir / SUMMARY_FILE
    with contextlib.suppress(OSError, ValueError):
        data = path.read_bytes()
        if json.loads(data).get("status") == "completed":
            st = path.stat()
            return st.st_ino, st.st_mtime_ns, hashlib.sha256(data).hexdigest()
    return None


@dataclass
class Verdict:
    problems: dict[str, list[str]] = field(default_factory=dict)  # trial -> what is wrong with it
    rows_lost: int = 0  # steps missing from metrics.jsonl, W&B or results.csv, over all trials
    wandb_pieces: int = 0

    def bad(self, trial: str, what: str) -> None:
        self.problems.setdefault(trial, []).append(what)

    @property
    def ok(self) -> bool:
        return not self.problems and self.rows_lost == 0


def check_trial(name: str, run: Path, ref: Path, first_stamp: tuple | None, v: Verdict, wandb: bool = True) -> None:
    """Every per-trial invariant of trial `name` (run directory `run`) against its unfaulted run `ref`."""
    want_rows = read_jsonl(ref / METRICS_FILE)
    rows = read_jsonl(run / METRICS_FILE)
    steps, want_steps = [r["step"] for r in rows], [r["step"] for r in want_rows]
    v.rows_lost += len(set(want_steps) - set(steps))
    if steps != want_steps:
        v.bad(name, f"logged steps {steps} != {want_steps}")
    for r, w in zip(rows, want_rows):
        if r["step"] == w["step"] and (d := diff(r, w)):
            v.bad(name, f"step {r['step']}: {d[:3]}")
            break
    stamp = summary_stamp(run)
    if stamp is None:
        v.bad(name, "not completed")
        return
    if first_stamp is not None and stamp != first_stamp:
        v.bad(name, "summary.json rewritten after the trial completed")
    got, want = (json.loads((d / SUMMARY_FILE).read_text()) for d in (run, ref))
    if d := diff(got, want):
        v.bad(name, f"final metrics differ from the unfaulted run: {d[:3]}")
    if not wandb:
        return
    pieces = wandb_pieces(run)
    v.wandb_pieces += len(pieces)
    # The run's summary in W&B: the last piece that wrote one says completed (a piece after it that completed too,
    # as when a process dies between W&B's finish and summary.json, would be harmless)
    ends = [p.summary.get("run", {}).get("status") for p in pieces if p.summary]
    if not ends or ends[-1] != "completed":
        v.bad(name, f"no W&B piece completed the run (of {len(pieces)}; their statuses: {ends})")
    history = merged_history(pieces)
    v.rows_lost += len(set(steps) - set(history))
    if sorted(history) != steps:
        v.bad(name, f"W&B history steps {sorted(history)} != metrics.jsonl's {steps}")
    for r in rows:  # time/* is measured per attempt: the first row of an attempt has none
        item = _compared({k: x for k, x in history.get(r["step"], {}).items() if not k.startswith("_")})
        want = _compared({k: x for k, x in r.items() if k != "step" and x is not None})
        if r["step"] in history and (item.keys() != want.keys() or diff(item, want, 1e-12)):
            v.bad(name, f"W&B row {r['step']} != metrics.jsonl's: {diff(item, want, 1e-12)[:3]}")
            break


def check_sweep(sweep_dir: Path, ref_dirs: dict[str, Path], stamps: dict[str, tuple], wandb: bool = True) -> Verdict:
    """check_trial for every trial, and results.csv: one completed row per trial."""
    v = Verdict()
    for name, ref in sorted(ref_dirs.items()):
        check_trial(name, sweep_dir / name, ref, stamps.get(name), v, wandb)
    rows = raw_rows(sweep_dir)
    seen = [r.get("trial") for r in rows]
    for name in ref_dirs:
        n = seen.count(name)
        if n == 0:
            v.rows_lost += 1
        states = [r.get("status") for r in rows if r.get("trial") == name]
        if states != ["completed"]:
            v.bad(name, f"results.csv has {n} row(s) for it, status {states}")
    for extra in sorted(set(seen) - set(ref_dirs)):
        v.bad(str(extra), "in results.csv but not a trial of the sweep")
    return v


def reference_runs(trials: list, out: Path, batch_seeds: bool | None = None) -> dict[str, Path]:
    """Each trial (launcher.sweep.spec.Trial) trained unfaulted into out/<name>, without W&B or a preemption flag,
    grouped as the sweep groups them (seed_groups.group_seeds): a group's seeds batched in one run_seeds, as the
    sweep trains them (batched seeds equal each seed alone only to float32 rounding), any other trial alone (dp x
    tp > 1 in local processes); {name: run dir}."""
    import copy

    from launcher.local import launch_trial
    from launcher.sweep.seed_groups import group_seeds
    from overparam_dist.train import run_seeds

    dirs = {}
    for t in group_seeds(trials, batch_seeds):
        cfgs = []
        for m in t.members or (t,):
            cfg = copy.deepcopy(m.cfg)
            cfg.run.dir, cfg.run.preempt_file, cfg.wandb.mode, cfg.run.quiet = str(out / m.name), "", "disabled", True
            cfgs.append(cfg)
            dirs[m.name] = out / m.name
        run_seeds(cfgs) if t.members else launch_trial(cfgs[0])
    return dirs


def start_references(trials: list, out: Path, batch_seeds: bool | None = None):
    """reference_runs in a separate (spawned) process, to overlap the run it is compared with; join it with
    references_done, which returns reference_runs's {name: run dir}."""
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=reference_runs, args=(trials, out, batch_seeds))
    proc.start()
    proc.dirs = {m.name: out / m.name for m in trials}
    return proc


def references_done(proc, timeout: float = 600) -> dict[str, Path]:
    proc.join(timeout)
    if proc.exitcode != 0:
        proc.kill()
        raise RuntimeError(f"the unfaulted reference runs failed (exit {proc.exitcode})")
    return proc.dirs
