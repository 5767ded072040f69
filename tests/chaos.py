"""A chaos run (issue 28): a sweep on a real two-node Ray on this host (tests/ray_nodes.py) while a fault injector,
driven by a seeded schedule, SIGKILLs trial processes, one node (its raylet and every process under it, as when
its machine dies; the sweep goes on on the other), and the sweep driver (then `--resume`); it fills the sweep's
small tmpfs once (a few seconds) and, once, makes it read-only while the driver is down (the `--resume` must refuse
in one line and change nothing). Shared by tests/test_chaos.py (reduced) and bench/chaos.py (full); the invariants
checked afterwards are in chaos_checks.py.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import chaos_checks
from chaos_checks import (
    TAG_ENV,
    Verdict,
    cmdline,
    code_stamp,
    kill,
    listeners_of,
    loopback,
    ppid,
    process_tree,
    summary_stamp,
    tagged_pids,
    teardown_leftovers,
    tree_snapshot,
)
from ray_nodes import RayNodes

from launcher.sweep.tune import PIDS_DIR  # <trial or group>.pid: the process running run_trial (rank 0)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Fault:
    kind: str  # kill_trial | kill_node | kill_driver | disk_full | read_only
    at: float  # seconds after the sweep started
    targets: list[str] = field(default_factory=list)  # the trials it hit
    detail: str = ""
    injected_at: float | None = None
    ok: bool = True  # read_only: the refused --resume was one line and changed nothing


def schedule(seed: int, kills: int, drivers: int, mean_gap: float, start: float = 3.0) -> list[Fault]:
    """`kills` trial kills, one node, `drivers` driver kills (the first one with the read-only episode) and one full
    disk, in a seeded random order at seeded random gaps around `mean_gap`."""
    rng = random.Random(seed)
    kinds = ["kill_trial"] * kills + ["kill_node"] + ["kill_driver"] * drivers + ["disk_full"]
    rng.shuffle(kinds)
    at, faults = start, []
    for kind in kinds:
        at += rng.uniform(0.5, 1.5) * mean_gap
        faults.append(Fault(kind, round(at, 2)))
        if kind == "kill_driver" and not any(f.kind == "read_only" for f in faults):
            faults.append(Fault("read_only", round(at, 2)))  # while that driver is down
    return faults


class Tmpfs:
    """A small tmpfs at `path` (root mounts it; the caller skips without root)."""

    def __init__(self, path: Path, size: str):
        path.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                             text=True)
        if res.returncode:
            raise PermissionError(f"cannot mount a tmpfs: {res.stderr.strip()}")
        self.path = path
        self.filler = path / ".chaos-fill"

    def fill(self) -> int:
        """Take every free byte; returns how many."""
        n = 0
        with open(self.filler, "wb", buffering=0) as f:
            for chunk in (1 << 20, 4096, 1):
                with contextlib.suppress(OSError):
                    while True:
                        n += f.write(b"\0" * chunk)
        return n

    def unfill(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, opts: str, timeout: float = 60) -> None:
        """`ro` fails (EBUSY) while any file on it is open for writing: retried until `timeout`."""
        deadline = time.time() + timeout
        while (res := subprocess.run(["mount", "-o", f"remount,{opts}", str(self.path)], capture_output=True,
                                     text=True)).returncode:
            if time.time() > deadline:
                raise RuntimeError(f"remount,{opts} of {self.path}: {res.stderr.strip()}")
            time.sleep(0.5)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


class Chaos:
    """Runs `overparam sweep --config SPEC` against the Ray of `nodes` and injects `faults` on time."""

    def __init__(self, spec: Path, name: str, disk: Tmpfs, nodes: RayNodes, faults: list[Fault], trials: list[str],
                 env: dict, work: Path, seed: int, fill_s: float = 4.0):
        self.spec, self.disk, self.nodes, self.faults, self.trials = spec, disk, nodes, faults, trials
        self.env, self.work, self.rng, self.fill_s = env, work, random.Random(seed + 1), fill_s
        self.sweep_dir = disk.path / name
        self.fill_until: float | None = None
        self._sampled = 0.0
        self.tag = env[TAG_ENV]
        self.stamps: dict[str, tuple] = {}  # trial -> its completed summary.json, as first seen
        self.ports: set[tuple[str, int]] = set()  # every port a process of the run listened on
        self.exposed: set[tuple[str, int, str]] = set()  # ... on more than loopback: (address, port, process)
        self.drivers = 0
        self.unplanned: list[str] = []  # driver exits nobody caused, each followed by --resume
        self.hits: dict[str, int] = {}  # trial -> kill_trial faults that hit it

    # ---------------------------------------------------------------------------------------------- the driver
    def _start(self, resume: bool) -> None:
        self.drivers += 1
        self.log = self.work / f"driver-{self.drivers}.log"
        self.driver = subprocess.Popen(self._cmd(resume), cwd=ROOT, env=self.env, stdout=open(self.log, "w"),
                                       stderr=subprocess.STDOUT)

    def _cmd(self, resume: bool) -> list[str]:
        return [sys.executable, "-m", "launcher", "sweep", "--config", str(self.spec), "--runs-dir",
                str(self.disk.path), "--address", self.nodes.address, "--progress-every", "10",
                *(["--resume"] if resume else [])]

    def _holders(self) -> dict[int, list[str]]:
        """pid -> the trials whose directory lock it holds (open .lock files under the sweep directory)."""
        out: dict[int, list[str]] = {}
        for pid in tagged_pids(self.tag):
            with contextlib.suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with contextlib.suppress(OSError):
                        link = Path(os.readlink(fd))
                        if link.name == ".lock" and link.parent.parent == self.sweep_dir:
                            out.setdefault(pid, []).append(link.parent.name)
        return out

    def _wait_trials_gone(self, timeout: float = 120) -> None:
        """After the driver died: until Ray has ended its trials (no process holds a trial's directory)."""
        deadline = time.time() + timeout
        while self._holders():
            if time.time() > deadline:
                raise RuntimeError(f"trial processes of a killed driver still run: {self._holders()}")
            self._poll()
            time.sleep(0.25)

    # ---------------------------------------------------------------------------------------------- faults
    def _inject(self, f: Fault) -> bool:
        running = {p: ts for p, ts in self._holders().items() if any(t not in self.stamps for t in ts)}
        if f.kind == "kill_trial":  # one that trains (not one still starting: a node or driver kill hits those)
            pids = sorted(p for p in self._pid_files() if p in running and self._training(running[p]))
            if not pids:
                return False
            fewest = min(self.hits.get(running[p][0], 0) for p in pids)  # spread the kills over the trials
            pid = self.rng.choice([p for p in pids if self.hits.get(running[p][0], 0) == fewest])
            self.hits[running[pid][0]] = fewest + 1
            f.targets = running[pid]
            ranks = _siblings(pid)  # a trial of several local processes: rank 0 (the PID file's) or another rank
            if len(ranks) > 1 and self.rng.random() < 0.5:
                pid = self.rng.choice([q for q in ranks if q != pid])
                f.detail = "a rank other than 0"
            kill([pid])
        elif f.kind == "kill_node":
            hosts = [n for n in self.nodes.workers() if set(process_tree(n["raylet_pid"])) & set(running)]
            if not hosts:
                return False
            node = self.rng.choice(hosts)
            tree = process_tree(node["raylet_pid"])
            f.targets = sorted({t for p in tree for t in running.get(p, [])})
            f.detail = f"node {node['id'][:12]}: {len(tree)} processes"
            kill(tree)  # the sweep goes on on the other node (a replacement takes minutes to join on 2 busy cores)
        elif f.kind == "kill_driver":
            if not running:
                return False
            f.targets = list(self.trials)
            kill([self.driver.pid])
            self.driver.wait()
            self._wait_trials_gone()
            ro = next((g for g in self.faults if g.kind == "read_only" and g.injected_at is None), None)
            if ro is not None:
                self._read_only(ro)
            self._start(resume=True)
        elif f.kind == "disk_full":
            if not running:
                return False
            f.targets = sorted({t for ts in running.values() for t in ts})
            f.detail = f"{self.disk.fill() / 1e6:.1f} MB written, freed after {self.fill_s:g} s"
            self.fill_until = time.time() + self.fill_s
        else:
            return False  # read_only: injected inside a kill_driver
        f.injected_at = round(time.time() - self.t0, 2)
        return True

    def _read_only(self, f: Fault) -> None:
        """The directory read-only while the driver is down: --resume refuses in one line, touching nothing."""
        self.disk.remount("ro")
        try:
            before = tree_snapshot(self.disk.path)
            res = subprocess.run(self._cmd(True), cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=300)
            same = tree_snapshot(self.disk.path) == before
        finally:
            self.disk.remount("rw")
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        f.ok = res.returncode == 2 and len(lines) == 1 and "read-only" in lines[0] and same
        f.detail = f"--resume: exit {res.returncode}: {lines[-1] if lines else ''}"[:300]
        f.targets = list(self.trials)
        f.injected_at = round(time.time() - self.t0, 2)

    def _training(self, trials: list[str]) -> bool:
        """Whether this attempt trains: a row logged after its W&B run started, after it took the lock (each
        attempt rewrites the lock file, then metrics.jsonl, then starts W&B, then logs rows)."""
        for t in trials:
            with contextlib.suppress(OSError, ValueError):
                d = self.sweep_dir / t
                started = max(p.stat().st_mtime_ns for p in (d / "wandb").glob("offline-run-*"))
                if (d / ".lock").stat().st_mtime_ns < started < (d / "metrics.jsonl").stat().st_mtime_ns:
                    return True
        return False

    def _pid_files(self) -> list[int]:
        out = []
        for p in (self.sweep_dir / PIDS_DIR).glob("*.pid"):
            with contextlib.suppress(OSError, ValueError):
                out.append(int(p.read_text()))
        return out

    # ---------------------------------------------------------------------------------------------- the loop
    def _poll(self) -> None:
        for t in self.trials:
            if t not in self.stamps and (s := summary_stamp(self.sweep_dir / t)) is not None:
                self.stamps[t] = s
        if self.fill_until is not None and time.time() > self.fill_until:
            self.disk.unfill()
            self.fill_until = None
        if time.time() - self._sampled > 2:
            self._sampled = time.time()
            for pid, addr, port in listeners_of(tagged_pids(self.tag)):
                self.ports.add((addr, port))
                if not loopback(addr):
                    self.exposed.add((addr, port, cmdline(pid)[:60]))

    def run(self, timeout: float) -> float:
        """The whole sweep with its faults; returns its wall time."""
        self.t0 = time.time()
        self._start(resume=False)
        pending = list(self.faults)
        while True:
            self._poll()
            rc = self.driver.poll()
            if rc is not None:
                self._poll()  # the last trials' summaries, written just before it exited
                if rc == 0 and len(self.stamps) == len(self.trials):
                    break
                if len(self.unplanned) >= 5:
                    raise RuntimeError(f"the driver keeps exiting: {self.unplanned}")
                tail = [ln for ln in self.log.read_text().splitlines() if ln.strip()][-1:]
                self.unplanned.append(f"exit {rc} at {time.time() - self.t0:.0f} s: {tail}")
                self._wait_trials_gone()
                self._start(resume=True)
                continue
            pending = [f for f in pending if f.kind != "read_only" or f.injected_at is None]
            if pending and time.time() - self.t0 >= pending[0].at:
                began = time.time()
                if self._inject(pending[0]):
                    pending.pop(0)
                    for g in pending:  # a driver's downtime (and the read-only episode) moves the later faults
                        g.at += time.time() - began
            if time.time() - self.t0 > timeout:
                kill([self.driver.pid])
                raise RuntimeError(f"the chaos sweep did not finish in {timeout:g} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return time.time() - self.t0


def _siblings(pid: int) -> list[int]:
    """The local processes of a multi-process trial (children of one fork server), or [pid]."""
    try:
        parent = ppid(pid)
        if b"forkserver" not in Path(f"/proc/{parent}/cmdline").read_bytes():
            return [pid]
    except OSError:
        return [pid]
    return [q for q in process_tree(parent) if ppid(q) == parent]  # its ranks, not their W&B services


@dataclass
class Outcome:
    trials: dict  # name -> Config
    faults: list[Fault]
    verdict: Verdict
    wall_s: float
    reference_s: float | None  # the unfaulted sweep's wall time, when it was the reference
    leftovers: list[str]  # processes of the run still alive after the cluster stopped
    open_ports: list[tuple[str, int]]  # ports of the run still listening then
    exposed: list[tuple[str, int, str]]  # listeners on more than loopback seen during the run
    unplanned: list[str]  # driver exits no fault caused (each followed by --resume)
    drivers: int
    code_changed: list[str]  # source files edited during the run: its comparisons with the reference are void

    @property
    def injected(self) -> list[Fault]:
        return [f for f in self.faults if f.injected_at is not None]

    @property
    def survived(self) -> list[Fault]:
        bad = set(self.verdict.problems)
        return [f for f in self.injected if f.ok and not set(f.targets) & bad]

    def lines(self) -> list[str]:
        by_kind: dict[str, int] = {}
        for f in self.injected:
            by_kind[f.kind] = by_kind.get(f.kind, 0) + 1
        n, v = len(self.trials), self.verdict
        dp = sorted({c.parallel.dp for c in self.trials.values()})
        out = [f"  {f.injected_at:7.1f} s  {f.kind:<11} {', '.join(f.targets[:3])}"
               + (f" (+{len(f.targets) - 3})" if len(f.targets) > 3 else "") + (f"  [{f.detail}]" if f.detail else "")
               for f in self.injected]
        out += [f"trials: {n} (dp in {dp}); invariants broken in {len(v.problems)}: "
                + "; ".join(f"{t}: {p[0]}" for t, p in sorted(v.problems.items())[:5]),
                f"W&B offline pieces read: {v.wandb_pieces}; driver runs: {self.drivers}; unplanned driver exits: "
                f"{len(self.unplanned)} {self.unplanned}",
                f"processes left: {len(self.leftovers)} {self.leftovers[:3]}; ports left open: {self.open_ports}; "
                f"listeners beyond loopback seen: {len(self.exposed)} {sorted(self.exposed)[:4]}",
                "faults injected: " + f"{len(self.injected)} ("
                + ", ".join(f"{k} {c}" for k, c in sorted(by_kind.items())) + ")",
                f"faults survived: {len(self.survived)}",
                f"rows lost: {v.rows_lost}"]
        if self.code_changed:
            out.insert(0, f"WARNING: the code changed during the run, comparisons are void: {self.code_changed}")
        if self.reference_s:
            out.append(f"time: faulted sweep {self.wall_s:.1f} s, unfaulted {self.reference_s:.1f} s: overhead "
                       f"{self.wall_s - self.reference_s:+.1f} s ({self.wall_s / self.reference_s - 1:+.0%})")
        else:
            out.append(f"time: faulted sweep {self.wall_s:.1f} s")
        return out

    @property
    def ok(self) -> bool:
        return (self.verdict.ok and len(self.survived) == len(self.injected) and not self.leftovers
                and not self.open_ports and not self.exposed and not self.code_changed)


def run_chaos(work: Path, spec: dict, *, seed: int, kills: int, drivers: int, mean_gap: float, timeout: float,
              reference: str = "inprocess", disk: str = "256m", fill_s: float = 4.0, log=print) -> Outcome:
    """The chaos run of sweep `spec` (its name, grid, overrides ...) in `work`: the reference ("inprocess": each
    trial trained alone here; "sweep": the same sweep unfaulted on the same Ray, timed), then the faulted sweep
    in a tmpfs, the cluster stopped, and every invariant checked."""
    import yaml

    from launcher.sweep.spec import load_sweep

    work.mkdir(parents=True, exist_ok=True)
    (path := work / f"{spec['name']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    sweep = load_sweep(path, runs_dir=work / "runs")
    trials = {t.name: t.cfg for t in sweep.trials}
    tag = secrets.token_hex(6)
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update({TAG_ENV: tag, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "RAY_AUTH_MODE": "disabled",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    tmpfs = Tmpfs(work / "runs", disk)
    code, refs = code_stamp(), None
    try:
        nodes = RayNodes(work, env)
        try:
            log(f"[chaos] Ray at {nodes.address}: {len(nodes.workers())} nodes; {len(trials)} trials")
            refs, reference_s = _reference(work, spec, sweep, reference, nodes.address, env, timeout, log)
            faults = schedule(seed, kills, drivers, mean_gap(reference_s) if callable(mean_gap) else mean_gap)
            chaos = Chaos(path, spec["name"], tmpfs, nodes, faults, list(trials), env, work, seed, fill_s)
            wall = chaos.run(timeout)
            log(f"[chaos] faulted sweep: {wall:.1f} s")
            if not isinstance(refs, dict):
                refs = chaos_checks.references_done(refs)
        finally:
            nodes.stop()
            if hasattr(refs, "kill"):  # the reference process, when the faulted sweep failed
                refs.kill()
        leftovers = teardown_leftovers(tag)
        still = set(chaos_checks.listening().values())
        verdict = chaos_checks.check_sweep(chaos.sweep_dir, refs, chaos.stamps)
    finally:
        if os.environ.get("CHAOS_KEEP") != "1":  # 1: leave the tmpfs mounted, to look at
            tmpfs.umount()
    changed = sorted(k for k, v in code_stamp().items() if code.get(k) != v)
    return Outcome(trials, faults, verdict, wall, reference_s, leftovers, sorted(chaos.ports & still),
                   sorted(chaos.exposed), chaos.unplanned, chaos.drivers, changed)


def _reference(work: Path, spec: dict, sweep, how: str, address: str, env: dict, timeout: float, log):
    """{trial: its unfaulted run directory} (or, "inprocess", the process computing them), and the unfaulted
    sweep's wall time (None in-process)."""
    trials = [t.name for t in sweep.trials]
    if how != "sweep":  # alongside the faulted sweep: joined after it
        return chaos_checks.start_references(sweep.trials, work / "ref", sweep.batch_seeds), None
    import yaml

    ref = {**spec, "name": spec["name"] + "-ref"}
    (path := work / f"{ref['name']}.yaml").write_text(yaml.safe_dump(ref, sort_keys=False))
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "launcher", "sweep", "--config", str(path), "--runs-dir",
                          str(work / "ref"), "--address", address, "--progress-every", "30"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode:
        raise RuntimeError(f"the unfaulted sweep failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    log(f"[chaos] unfaulted sweep: {(took := time.time() - t0):.1f} s")
    return {name: work / "ref" / ref["name"] / name for name in trials}, took
