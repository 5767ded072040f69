"""Where metrics go, on rank 0: metrics.jsonl always (the source of truth, written first), then W&B,
then the launcher's `on_log` callback (a Ray sweep passes one that reports to Tune; the library knows no Ray).

W&B and the callback are best effort: any error there logs one warning and training continues with JSONL only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from .config import LR_RULES, Config, to_dict
from .rundir import CONFIG_FILE, METRICS_FILE, WANDB_DIR, atomic_write


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_jsonl(path: Path) -> list[dict]:
    """The logged rows of a metrics.jsonl: the lines that are mappings with an integer step. Any other line (a torn
    last line from a killed process, bytes that are not a row) is dropped, never a traceback."""
    rows = []
    if path.is_file():
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and type(row.get("step")) is int:
                        rows.append(row)
    return rows


class JsonlSink:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            # Rows logged after the checkpoint we resume from will be logged again: drop them.
            rows = [r for r in read_jsonl(self.path) if r["step"] < resume_step]
        else:
            rows = []
        atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in rows))
        self.file = open(self.path, "a")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def wandb_run_id(run_dir: Path) -> str:
    """Stable across restarts of the same trial: kept in the run directory once chosen."""
    id_file = run_dir / "wandb_id"
    if id_file.is_file():
        return id_file.read_text().strip()
    run_id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:16]
    id_file.write_text(run_id + "\n")
    return run_id


# ---------------------------------------------------------------------------------------------- W&B

WANDB_INIT_TIMEOUT_S = 180  # generous: a busy login node or a slow network must not disable W&B
OSH_ENV = "OVERPARAM_WANDB_OSH"  # "0" turns the wandb-osh trigger off even when wandb-osh is installed
OSH_DIR_ENV = "WANDB_OSH_COMMAND_DIR"  # wandb-osh's communication directory (default: its own)
OSH_EVERY_S = 30.0  # at most one wandb-osh sync request per trial every this many seconds


class WandbWarning(UserWarning):
    """The one warning a trial (or the report's summary run) emits when W&B fails; training goes on."""


def wandb_mode(cfg_mode: str) -> str:
    """`wandb.mode`, except that WANDB_MODE in the environment wins over the default (offline).

    So `WANDB_MODE=online overparam sweep ...` (or `disabled`) works without touching configs, while an explicit
    `wandb.mode=online` / `disabled` in a config is kept. An invalid WANDB_MODE makes wandb.init fail: one warning.
    """
    env = os.environ.get("WANDB_MODE")
    if cfg_mode == "offline" and env:
        return "offline" if env == "dryrun" else env
    return cfg_mode


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and "validation error" in lines[0]:  # pydantic (wandb.Settings): say which field
        return f"{lines[0]}: {lines[1]}: {lines[2] if len(lines) > 2 else ''}"[:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def warn_wandb(what: str, exc: BaseException, stacklevel: int = 3) -> None:
    warnings.warn(f"{what}: {type(exc).__name__}: {_first_line(exc)}", WandbWarning, stacklevel=stacklevel)


def wandb_init(*, mode: str, project: str, entity: str, group: str, job_type: str, name: str, run_id: str,
               out_dir: Path, config: dict, tags: list[str] | None = None):
    """wandb.init with the settings every run of ours uses (offline files under `out_dir`/wandb/).

    Raises whatever wandb raises; callers turn that into one WandbWarning. Never passes an API key:
    wandb reads WANDB_API_KEY / ~/.netrc itself and writes neither into the run files.
    """
    import wandb

    return wandb.init(
        project=project,
        entity=entity or None,
        group=group or None,
        job_type=job_type,
        name=name,
        tags=tags,
        id=run_id,
        resume="allow",  # a restarted trial continues its run (offline: a new offline-run-* dir, same id)
        dir=str(out_dir),
        mode=mode,
        config=config,
        settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, silent=True, console="off"),
        reinit="create_new",  # a Ray actor reused for the next trial may still hold a run
    )


def _wandb_value(v: Any) -> bool:
    """Metric values W&B gets: finite numbers (JSONL writes non-finite as null; W&B leaves them out)."""
    return isinstance(v, (int, float)) and (isinstance(v, bool) or math.isfinite(v))


def _run_config(cfg: Config, run_dir: Path) -> dict:
    """The resolved config as written to config.yaml (with its `derived:` facts), else the schema dict. With
    train.lr=auto, train.lr is the base rate the trial resolved and uses (so W&B's columns compare step sizes
    across trials) and train.lr_rule says which rule (auto or lambda_min) set it."""
    config = to_dict(cfg)
    path = run_dir / CONFIG_FILE
    if path.is_file():
        try:
            import yaml

            loaded = yaml.safe_load(path.read_text())
            if isinstance(loaded, dict):
                config = loaded
        except Exception:
            pass
    used = config.get("derived", {}).get("lr", {}).get("lr")
    if isinstance(used, (int, float)) and (rule := config.get("train", {}).get("lr")) in LR_RULES:
        config["train"] = {**config["train"], "lr": used, "lr_rule": rule}
    return config


def run_label(group: str, name: str) -> str:
    """<sweep>/<trial>: a trial's name unique across the sweeps of a project (W&B run name, Ray actor)."""
    return f"{group}/{name}" if group else name


def wandb_names(cfg: Config, name: str) -> tuple[str, list[str]]:
    """A trial's W&B run name, unique across the sweeps of a project (<sweep>/<trial>), and its tags, so that runs
    sort and filter themselves by sweep, architecture, parameterization, depth and width."""
    m = cfg.model
    group = cfg.wandb.group
    tags = ([f"sweep:{group}"] if group else []) + [f"arch:{m.arch}", f"param:{m.param}", f"depth:{m.depth}",
                                                     f"width:{m.width}"]
    return run_label(group, name), tags


SUMMARY_META = "run"  # W&B summary: the trial's facts (status, dp, tp, wall time ...) nested here, apart from metrics


def wandb_summary(summary: dict, meta: dict | None = None) -> dict:
    """summary.json for the W&B run summary: metric keys ("family/name", metrics/names.py) at the top level, where
    W&B charts and sorts them; every other fact of the trial (and `meta`) under SUMMARY_META. Non-finite floats
    are left out."""
    def finite(v: Any) -> bool:
        return not (isinstance(v, float) and not math.isfinite(v))

    metrics = {k: v for k, v in summary.items() if "/" in k and finite(v)}
    facts = {k: v for k, v in summary.items() if "/" not in k and finite(v)}
    return {**metrics, SUMMARY_META: {**facts, **(meta or {})}}


_WANDB_BLOCK = 32768  # .wandb files: LevelDB-log framing in 32 KiB blocks after a 7-byte file header
_WANDB_FILE_HEADER = 7
_WANDB_CHUNK_HEADER = 7


def wandb_records(path: Path):
    """The protobuf Records of a .wandb transaction log, in order, read without wandb's service: chunks with a
    7-byte header (CRC32 of type byte + data, length, type FULL/FIRST/MIDDLE/LAST) holding protobuf Records.
    Stops at the first torn or corrupt chunk, as left by a killed writer."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if not data.startswith(b":W&B"):
        return
    buf, pos = b"", _WANDB_FILE_HEADER
    while pos + _WANDB_CHUNK_HEADER <= len(data):
        left = _WANDB_BLOCK - pos % _WANDB_BLOCK
        if left < _WANDB_CHUNK_HEADER:  # block trailer: padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _WANDB_CHUNK_HEADER])
        chunk = data[pos + _WANDB_CHUNK_HEADER:pos + _WANDB_CHUNK_HEADER + length]
        if kind == 0 or len(chunk) < length or zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF != crc:
            break
        pos += _WANDB_CHUNK_HEADER + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_history_steps(path: Path) -> list[int]:
    """Steps of the history records in a .wandb transaction log (wandb_records)."""
    return [int(rec.history.step.num) for rec in wandb_records(path) if rec.WhichOneof("record_type") == "history"]


def _last_offline_step(run_dir: Path, run_id: str, current: Path | None) -> int:
    """The last history step of this trial's earlier offline pieces (-1: none)."""
    last = -1
    for f in (run_dir / WANDB_DIR).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"):
        if current is not None and f.parent.resolve() == current.resolve():
            continue
        steps = wandb_history_steps(f)
        if steps:
            last = max(last, max(steps))
    return last


class _OshTrigger:
    """Live sync from compute nodes without internet through wandb-osh (https://github.com/klieret/wandb-offline-sync-hook),
    when it is installed and the run is offline: each request is a small file in wandb-osh's communication
    directory (shared file system) that `wandb-osh` on a login node turns into `wandb sync`. Throttled."""

    def __init__(self, run, mode: str):
        self.hook = None
        self.last = -math.inf
        if mode != "offline" or os.environ.get(OSH_ENV, "1") == "0":
            return
        try:
            from wandb_osh.hooks import TriggerWandbSyncHook
        except Exception:  # not installed (or broken): nothing to do
            return
        kwargs = {"communication_dir": os.environ[OSH_DIR_ENV]} if os.environ.get(OSH_DIR_ENV) else {}
        self.hook = TriggerWandbSyncHook(**kwargs)
        self.logdir = Path(run.dir).parent  # run.dir is offline-run-*/files; wandb-osh syncs offline-run-*

    def __call__(self, force: bool = False) -> None:
        if self.hook is None:
            return
        now = time.monotonic()
        if force or now - self.last >= OSH_EVERY_S:
            self.last = now
            self.hook(self.logdir)


class WandbSink:
    """One W&B run per trial (rank 0 only): group = the sweep, job_type = "trial", config = the resolved config,
    id stable across restarts (`wandb_id` in the run directory) with resume="allow". Each logged row is one
    committed W&B step with the metric keys of metrics/names.py; summary.json goes into the run summary at the end.

    Best effort: the first W&B error logs one WandbWarning and the sink turns itself off; JSONL (written
    before W&B, always) stays the record.
    """

    def __init__(self, cfg: Config, run_dir: Path, name: str, resume_step: int | None = None):
        self.run = None
        self.osh = None
        self.meta: dict[str, Any] = {}  # facts for the summary's SUMMARY_META besides summary.json's
        self.mode = wandb_mode(cfg.wandb.mode)
        if self.mode == "disabled":
            return
        try:
            run_name, tags = wandb_names(cfg, name)
            self.run = wandb_init(
                mode=self.mode, project=cfg.wandb.project, entity=cfg.wandb.entity, group=cfg.wandb.group,
                job_type="trial", name=run_name, run_id=wandb_run_id(run_dir), out_dir=run_dir,
                config=_run_config(cfg, run_dir), tags=tags)
            self.osh = _OshTrigger(self.run, self.mode)
            if resume_step is not None:
                self.meta["resumed_from_step"] = resume_step
                self.run.summary[SUMMARY_META] = dict(self.meta)
                self._backfill(run_dir, resume_step)
        except Exception as exc:  # never let W&B stop training
            warn_wandb("W&B disabled for this trial, continuing with JSONL only", exc)
            self._drop()

    def _backfill(self, run_dir: Path, resume_step: int) -> None:
        """A killed process loses the rows its W&B service had not written yet; JSONL kept them (up to the
        checkpoint we resume from). Log the rows after the run's last W&B step again, so W&B has every step."""
        try:
            if self.mode == "offline":
                last = _last_offline_step(run_dir, self.run.id, Path(self.run.dir).parent)
            else:  # online: the server told wandb.init where the resumed run stands
                last = int(getattr(self.run, "starting_step", 0) or 0) - 1
        except Exception:  # an unreadable earlier piece: no backfill rather than duplicate steps
            return
        for row in read_jsonl(run_dir / METRICS_FILE):
            if last < row["step"] < resume_step:
                self.log(row["step"], {k: v for k, v in row.items() if k != "step"})

    def _drop(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:
                pass

    def _guard(self, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as exc:
            warn_wandb("W&B logging failed, continuing with JSONL only", exc, stacklevel=4)
            self._drop()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        def put():
            row = {k: v for k, v in metrics.items() if _wandb_value(v)}
            self.run.log(row, step=step, commit=True)  # committed now: the summary set at the end is not overwritten
            self.osh()
        self._guard(put)

    def summary(self, summary: dict) -> None:
        def put():
            self.run.summary.update(wandb_summary(summary, self.meta))
        self._guard(put)

    def preempting(self) -> None:
        """Tell W&B this run is being preempted and will resume (a requeued job continues it)."""
        self._guard(lambda: self.run.mark_preempting())

    def close(self) -> None:
        def finish():
            self.run.finish()
            self.run = None
            self.osh(force=True)  # after finish: the last request covers the complete run
        self._guard(finish)


OnLog = Callable[[dict], None]  # receives {"step": s, <metric key>: value, ...} for every logged row


class CallbackSink:
    """Each logged row, handed to the launcher's callback (for a Ray sweep: the Tune trial's results)."""

    def __init__(self, on_log: OnLog | None):
        self.on_log = on_log

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.on_log is None:
            return
        try:
            self.on_log({"step": step, **{k: _clean(v) for k, v in metrics.items()}})
        except Exception as exc:
            warnings.warn(f"on_log callback failed, continuing without it: {type(exc).__name__}: {exc}",
                          stacklevel=2)
            self.on_log = None


class Sinks:
    """All sinks of one trial. Only rank 0 creates one."""

    def __init__(self, cfg: Config, run_dir: Path, name: str, resume_step: int | None, on_log: OnLog | None = None):
        self.jsonl = JsonlSink(run_dir, resume_step)
        self.wandb = WandbSink(cfg, run_dir, name, resume_step)
        self.callback = CallbackSink(on_log)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.log(step, metrics)  # first: JSONL is the record even if W&B misbehaves
        self.wandb.log(step, metrics)
        self.callback.log(step, metrics)

    def finish(self, summary: dict) -> None:
        self.jsonl.close()
        if summary.get("status") == "preempted":
            self.wandb.preempting()
        self.wandb.summary(summary)
        self.wandb.close()
