"""The Ray a sweep runs on: a cluster given by address (or RAY_ADDRESS), else a private local Ray that lives
exactly as long as the sweep."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
from dataclasses import dataclass
from typing import Iterator
from urllib.parse import urlparse

from overparam_dist.config import ConfigError


@dataclass
class RayInfo:
    address: str
    dashboard_url: str | None
    embedded: bool


def check_reachable(address: str) -> None:
    if address in ("auto", "local"):
        return
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.scheme in ("http", "https"):
        raise ConfigError(
            f"--address '{address}' is a dashboard URL: `overparam sweep` connects to the cluster itself "
            "(HOST:6379 or ray://HOST:10001); `overparam submit ray --address http://HOST:8265` submits a job")
    if url.scheme not in ("tcp", "ray") or not url.hostname or not url.port:
        raise ConfigError(f"--address '{address}' is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((url.hostname, url.port), timeout=5):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at '{address}': {exc.strerror or exc}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[RayInfo]:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a private local Ray and stop it after.

    A process that is already connected (ray.is_initialized()) keeps its connection and is not shut down.
    """
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        yield RayInfo(address=ctx.gcs_address, dashboard_url=None, embedded=False)
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    tmp = None
    if address:
        check_reachable(address)
        try:
            ctx = ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        except Exception as exc:
            msg = _first_line(exc)
            if "auth" in msg.lower() or "token" in msg.lower():
                msg += " (token auth: set RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN, " \
                       "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
            raise ConfigError(f"cannot connect to the Ray cluster at '{address}': {msg}") from None
        info = RayInfo(address=address, dashboard_url=_url(ctx.dashboard_url), embedded=False)
    else:
        tmp = f"/tmp/opr-{secrets.token_hex(3)}"  # AF_UNIX socket paths must stay short
        ctx = ray.init(address="local", _temp_dir=tmp, num_cpus=num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1", logging_level="ERROR",
                       log_to_driver=False)
        info = RayInfo(address=ray.get_runtime_context().gcs_address, dashboard_url=_url(ctx.dashboard_url),
                       embedded=True)
    try:
        yield info
    finally:
        ray.shutdown()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _url(dashboard: str | None) -> str | None:
    if not dashboard:
        return None
    return dashboard if "://" in dashboard else f"http://{dashboard}"


def ray_connected() -> bool:
    """Whether this process already holds a Ray connection (without importing Ray for nothing)."""
    import sys

    if "ray" not in sys.modules:
        return False
    import ray

    return ray.is_initialized()
