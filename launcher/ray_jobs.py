"""Ray Jobs: `overparam submit ray` and `overparam jobs status|logs|stop JOB_ID` for Ray job ids.

A submitted sweep is `python -m launcher sweep --config FILE ...` run as a Ray Job: the repository is
uploaded as the job's working directory (runtime_env working_dir, without .venv, runs/, .git, data/), and
the job's driver connects to the cluster through the RAY_ADDRESS that Ray Jobs sets for it. The cluster's
Python must have this project's dependencies (start the cluster from the project's environment).

Token authentication (Ray >= 2.52): set RAY_AUTH_MODE=token and give the cluster's token in RAY_AUTH_TOKEN,
a file named by RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. Without one, requests to a cluster that needs
it fail with one clear line (exit 2).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from overparam_dist.config import ConfigError
from overparam_dist.rundir import atomic_write

from .sweep.spec import REPO, load_sweep

WORKING_DIR_EXCLUDES = [".venv", ".git", "runs", "data", "wandb", "**/__pycache__", "*.egg-info", ".pytest_cache",
                        ".ruff_cache"]
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


FORWARDED_ENV = ("WANDB_MODE", "WANDB_PROJECT", "WANDB_ENTITY")  # settings only; see cmd_submit


def _state_file() -> Path:
    root = os.environ.get("OVERPARAM_STATE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "overparam")
    return Path(root) / "ray_jobs.json"


def _remember(job_id: str, address: str, sweep: str) -> None:
    path = _state_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        known = json.loads(path.read_text()) if path.is_file() else {}
        known[job_id] = {"address": address, "sweep": sweep, "submitted": time.time()}
        atomic_write(path, json.dumps(known, indent=1))
    except (OSError, json.JSONDecodeError):
        pass  # only a convenience for `overparam jobs` without --address


def _recalled(job_id: str) -> str | None:
    try:
        return json.loads(_state_file().read_text()).get(job_id, {}).get("address")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _normalise(address: str) -> str:
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = f"http://{address}"
    return address


def _auth_hint() -> str:
    mode = os.environ.get("RAY_AUTH_MODE", "")
    has_token = bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").is_file()
    if mode != "token":
        return (f"RAY_AUTH_MODE is {mode or 'unset'}: set RAY_AUTH_MODE=token and the cluster's token in "
                "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (`ray get-auth-token` on the head node)")
    if not has_token:
        return ("RAY_AUTH_MODE=token but no token was found: set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH "
                "or ~/.ray/auth_token")
    return "the token was rejected: it is not this cluster's token"


def client(address: str | None):
    """A JobSubmissionClient for the dashboard at `address`; every failure is a one-line ConfigError."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise ConfigError("no Ray cluster given: pass --address http://HOST:8265 (the dashboard) or set RAY_ADDRESS")
    if address.startswith("ray://") or (not address.startswith("http") and address.rsplit(":", 1)[-1] == "6379"):
        raise ConfigError(f"--address '{address}' is not a dashboard: Ray Jobs uses http://HOST:8265")
    address = _normalise(address)
    url = urlparse(address)
    if not url.hostname:
        raise ConfigError(f"--address '{address}' is not a URL like http://HOST:8265")
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray dashboard at '{address}': {exc.strerror or exc}") from None

    import logging

    logging.getLogger("ray._private.authentication.http_token_authentication").setLevel(logging.ERROR)
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:
        raise _as_config_error(exc, address) from None


def _as_config_error(exc: Exception, address: str) -> ConfigError:
    text = str(exc)
    if type(exc).__name__ == "AuthenticationError" or re.search(r"\b(401|403)\b|[Uu]nauthori[sz]ed|[Ff]orbidden",
                                                                 text):
        return ConfigError(f"the Ray cluster at '{address}' requires token authentication: {_auth_hint()}")
    if isinstance(exc, ConnectionError):
        return ConfigError(f"cannot connect to the Ray dashboard at '{address}': {_first(text)}")
    if "does not exist" in text or "404" in text:
        return ConfigError(_first(text).replace("Request failed with status code 404: ", ""))
    return ConfigError(f"Ray Jobs at '{address}': {_first(text)}")


def _first(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:400] if lines else "unknown error"


def entrypoint(config_rel: str, overrides: list[str], runs_dir: str | None, resume: bool, python: str) -> str:
    cmd = [python, "-m", "launcher", "sweep", "--config", config_rel]
    if runs_dir:
        cmd += ["--runs-dir", runs_dir]
    if resume:
        cmd.append("--resume")
    cmd += list(overrides)
    return " ".join(shlex.quote(c) for c in cmd)


def _existing_job(c, job_id: str) -> str | None:
    """The status of the job with this submission id on the cluster, or None when there is none."""
    try:
        return str(c.get_job_info(job_id).status).split(".")[-1]
    except Exception:  # noqa: BLE001 - the SDK raises a plain RuntimeError for "does not exist"
        return None


def cmd_submit(args: argparse.Namespace) -> int:
    config = Path(args.config).resolve()
    # Validate here, before anything is uploaded: the same checks the job's driver will make.
    sweep = load_sweep(config, args.overrides, runs_dir=args.runs_dir or "runs")
    try:
        config_rel = config.relative_to(REPO).as_posix()
    except ValueError:
        raise ConfigError(f"sweep file '{args.config}' must be inside the uploaded working directory {REPO}/ "
                          "(e.g. configs/sweep/)") from None
    c = client(args.address)
    address = _normalise(args.address or os.environ["RAY_ADDRESS"])
    if args.job_id and (taken := _existing_job(c, args.job_id)) is not None:
        # Before the upload: Ray's own refusal is a 500 with a server traceback, after the packaging noise.
        raise ConfigError(f"--job-id '{args.job_id}' already exists on {address} ({taken}); choose another id, "
                          "or omit --job-id for a fresh one")
    runtime_env = {"working_dir": str(REPO), "excludes": WORKING_DIR_EXCLUDES}
    # Never a secret: runtime_env is returned in plain text by the dashboard's job API and written to Ray's logs.
    # Cluster nodes get W&B credentials from ~/.netrc on the shared file system (`wandb login`) or their own
    # environment (docs/guides/ray.md).
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    try:
        job_id = c.submit_job(
            entrypoint=entrypoint(config_rel, args.overrides, args.runs_dir, args.resume, args.python),
            runtime_env=runtime_env,
            metadata={"overparam_sweep": sweep.name},
            submission_id=args.job_id,
        )
    except Exception as exc:
        raise _as_config_error(exc, address) from None
    _remember(job_id, address, sweep.name)
    print(f"job id: {job_id}")
    print(f"dashboard: {address}/#/jobs/{job_id}")
    print(f"follow it: overparam jobs logs {job_id} --follow   (status, stop: overparam jobs status|stop {job_id})")
    if args.wait:
        return _wait(c, job_id, follow_logs=True)
    return 0


def _wait(c, job_id: str, follow_logs: bool) -> int:
    printed = 0
    while True:
        status = str(c.get_job_status(job_id)).split(".")[-1]
        if follow_logs:
            logs = c.get_job_logs(job_id)
            if len(logs) > printed:
                sys.stdout.write(logs[printed:])
                sys.stdout.flush()
                printed = len(logs)
        if status in TERMINAL:
            print(f"job {job_id}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(2)


def owns_job_id(job_id: str) -> bool:
    """Ray submission ids are strings like raysubmit_XXXX; a numeric id belongs to a batch scheduler."""
    return not re.fullmatch(r"\d+(_\d+)?", job_id)


def jobs_command(action: str, job_id: str, args: argparse.Namespace) -> int:
    address = getattr(args, "address", None) or _recalled(job_id) or os.environ.get("RAY_ADDRESS")
    c = client(address)
    address = _normalise(address)
    try:
        if action == "status":
            info = c.get_job_info(job_id)
            status = str(info.status).split(".")[-1]
            print(f"{job_id}: {status}" + (f" ({info.message})" if info.message else ""))
            print(f"dashboard: {address}/#/jobs/{job_id}")
            return 0
        if action == "logs":
            if getattr(args, "follow", False):
                return _wait(c, job_id, follow_logs=True)
            sys.stdout.write(c.get_job_logs(job_id))
            sys.stdout.flush()
            return 0
        if action == "stop":
            stopped = c.stop_job(job_id)
            print(f"{job_id}: " + ("stop requested" if stopped else "not running (nothing to stop)"))
            return 0
    except ConfigError:
        raise
    except Exception as exc:
        raise _as_config_error(exc, address) from None
    raise ConfigError(f"unknown jobs action '{action}'")


def add_submit_parser(targets) -> None:
    r = targets.add_parser("ray", help="submit the sweep as a Ray Job (prints the job id and the dashboard URL)")
    r.add_argument("--address", default=None,
                   help="the cluster's dashboard, http://HOST:8265 (default: RAY_ADDRESS)")
    r.add_argument("--config", required=True, help="sweep YAML inside this repository (configs/sweep/*.yaml)")
    r.add_argument("--runs-dir", default=None,
                   help="where the job writes runs/<sweep>/ on the cluster (default: runs/ in the job's working "
                        "directory, which Ray deletes eventually: give a shared path for results you keep)")
    r.add_argument("--resume", action="store_true", help="pass --resume to the sweep")
    r.add_argument("--python", default="python", help="the cluster's Python command (default: python)")
    r.add_argument("--job-id", default=None, help="submission id (default: Ray chooses raysubmit_...)")
    r.add_argument("--wait", action="store_true", help="stay and print the job's logs until it ends")
    r.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep keys or trial config keys, as for `overparam sweep`")
    r.set_defaults(fn=cmd_submit)
