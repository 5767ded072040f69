"""Where metrics go, on rank 0: metrics.jsonl always (the source of truth, written first), then W&B,
then Ray (only when the trial runs inside a Ray Tune trial or a Ray Train worker group).

W&B and Ray are best effort: any error there logs one warning and training continues with JSONL only.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from .config import Config, to_dict

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break  # a torn last line from a killed process: drop it
    return rows


class JsonlSink:
    def __init__(self, run_dir: Path, resume_step: int | None):
        self.path = run_dir / METRICS_FILE
        if resume_step is not None:
            # Rows logged after the checkpoint we resume from will be logged again: drop them.
            rows = [r for r in read_jsonl(self.path) if r["step"] < resume_step]
        else:
            rows = []
        tmp = self.path.with_suffix(".jsonl.tmp")
        with open(tmp, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
        os.replace(tmp, self.path)
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


class WandbSink:
    def __init__(self, cfg: Config, run_dir: Path, name: str):
        self.run = None
        mode = os.environ.get("WANDB_MODE") if cfg.wandb.mode == "offline" and "WANDB_MODE" in os.environ \
            else cfg.wandb.mode
        if mode == "disabled":
            return
        try:
            import wandb

            self.run = wandb.init(
                project=cfg.wandb.project,
                entity=cfg.wandb.entity or None,
                group=cfg.wandb.group or None,
                job_type="trial",
                name=name,
                id=wandb_run_id(run_dir),
                resume="allow",
                dir=str(run_dir),
                mode=mode,
                config=to_dict(cfg),
                settings=wandb.Settings(init_timeout=180, silent=True, console="off"),
                reinit="create_new",
            )
        except Exception as exc:  # never let W&B stop training
            warnings.warn(f"W&B disabled for this trial: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
                          stacklevel=2)
            self.run = None

    def _guard(self, fn, *args) -> None:
        if self.run is None:
            return
        try:
            fn(*args)
        except Exception as exc:
            warnings.warn(f"W&B logging failed, continuing with JSONL only: {type(exc).__name__}: {exc}",
                          stacklevel=3)
            self.run = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._guard(lambda: self.run.log({k: v for k, v in metrics.items() if v is not None}, step=step))

    def summary(self, summary: dict) -> None:
        def put():
            for k, v in summary.items():
                if isinstance(v, (int, float, str, bool)) or v is None:
                    self.run.summary[k] = v
        self._guard(put)

    def close(self) -> None:
        self._guard(lambda: self.run.finish())


# A reporter installed by the launcher in a Ray Train worker (launcher/sweep.py): Train V2's
# `ray.train.report` is a barrier over all workers, but only rank 0 has sinks, so rank 0 forwards its
# rows to the Tune trial through this instead. None: use `ray.tune.report` when inside a Tune trial.
_ray_reporter: Callable[[dict], None] | None = None


def set_ray_reporter(fn: Callable[[dict], None] | None) -> None:
    global _ray_reporter
    _ray_reporter = fn


def _tune_reporter() -> Callable[[dict], None] | None:
    if "ray" not in sys.modules:  # never import ray for a plain run
        return None
    try:
        from ray.tune.trainable.trainable_fn_utils import _in_tune_session

        if _in_tune_session():
            from ray import tune

            return lambda row: tune.report(row)
    except Exception:
        pass
    return None


class RaySink:
    """Each logged row, as a Ray Tune result (Tune's trial table, the dashboard, Tune callbacks)."""

    def __init__(self):
        self.report = _ray_reporter or _tune_reporter()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.report is None:
            return
        try:
            self.report({"step": step, **{k: _clean(v) for k, v in metrics.items()}})
        except Exception as exc:
            warnings.warn(f"Ray reporting failed, continuing without it: {type(exc).__name__}: {exc}", stacklevel=2)
            self.report = None


class Sinks:
    """All sinks of one trial. Only rank 0 creates one."""

    def __init__(self, cfg: Config, run_dir: Path, name: str, resume_step: int | None):
        self.jsonl = JsonlSink(run_dir, resume_step)
        self.wandb = WandbSink(cfg, run_dir, name)
        self.ray = RaySink()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.log(step, metrics)  # first: JSONL is the record even if W&B misbehaves
        self.wandb.log(step, metrics)
        self.ray.log(step, metrics)

    def finish(self, summary: dict) -> None:
        self.jsonl.close()
        self.wandb.summary(summary)
        self.wandb.close()
