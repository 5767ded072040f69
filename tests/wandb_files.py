"""W&B's offline files read back (`wandb leet inspect --json`), and the environment of a W&B subprocess: shared by
test_wandb_report.py, test_wandb_trial.py and test_seeds.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

FAKE_KEY = "fake-key-1234567890abcdef"
WANDB = str(Path(sys.executable).with_name("wandb"))
# lr_scale 0.4: well inside the stability edge at every width (lr * lambda_max(Theta_0) / n = 0.4), so every trial
# is inside its regime and in every fit.
TINY = ["data.n=16", "train.steps=20", "metrics.every=5", "train.stop_at_fit=false", "checkpoint.every=0",
        "run.quiet=true", "train.lr_scale=0.4"]


def records(wandb_file: Path | None) -> list[dict]:
    """Every record of a .wandb transaction log, via `wandb leet inspect --json` ([] for no file)."""
    if wandb_file is None:
        return []
    out = subprocess.run([WANDB, "leet", "inspect", "--json", str(wandb_file)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_file(offline_run: Path) -> Path | None:
    files = list(offline_run.glob("run-*.wandb"))
    assert len(files) <= 1, files
    return files[0] if files else None


def history(recs: list[dict]) -> dict[int, dict]:
    return {int(r["history"]["step"]["num"]): r["history"]["item"] for r in recs if r["type"] == "history"}


def final_summary(recs: list[dict]) -> dict:
    out: dict = {}
    for r in recs:
        if r["type"] == "summary":
            out.update(r["summary"].get("update", {}))
    return out


def run_record(recs: list[dict]) -> dict:
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    return run


def sub_env(**extra: str) -> dict:
    """The environment for a subprocess: without WANDB_SERVICE, which an in-process wandb.init of an earlier test
    exports (a child would otherwise use this process's W&B service, which outlives it and writes lazily)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env.update(extra)
    return env


def flush_wandb() -> None:
    """Make this process's W&B service write everything out (run.finish() leaves a shared service running)."""
    import wandb

    wandb.teardown()


def cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m launcher.report ...` (the report/wandb subcommands; `overparam report` once wired in cli.py)."""
    return subprocess.run([sys.executable, "-m", "launcher.report", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env if env is not None else sub_env())


def no_login_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in sub_env().items() if k not in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), NETRC=str(home / ".netrc"), WANDB_CONFIG_DIR=str(home / ".config" / "wandb"))
    return env


def files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
