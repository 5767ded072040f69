"""The Ray a sweep runs on: a cluster given by address (or RAY_ADDRESS), else a private local Ray that lives
exactly as long as the sweep."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
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


EMBEDDED_PREFIX = "/tmp/opr-"  # the private Ray's temp dir: /tmp/opr-<6 hex>/
DRIVER_FILE = "driver.pid"  # in it: the PID of the sweep driver that owns it


def _loopback_only() -> None:
    """Make the private Ray listen on 127.0.0.1 only.

    Ray turns a node IP of 127.0.0.1 into the host's external address, and its servers bind to the node IP, so
    `_node_ip_address="127.0.0.1"` alone leaves gcs_server, raylet and the workers reachable from the network.
    Ray's own switch for a loopback-only node is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what it does on macOS):
    its processes read it when they start; in a process that imported Ray already, the constant it was read
    into is set too (a private name, kept in this one place).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import sys

    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def _agent_port_free() -> None:
    """Let the private Ray's dashboard agent pick a free HTTP port instead of Ray's fixed 52365.

    A second Ray on the host already holds 52365, and then job submission to ours fails. `ray.init` has no
    argument for this port (`ray start` has --dashboard-agent-listen-port); RayParams takes it with a default
    of 52365, and Ray's node code turns 0 into "any free port", as it does for the agent's other ports. So the
    default is set to 0 here, in this one place, because no public API reaches it.
    """
    import inspect

    from ray._private.parameter import RayParams

    init = RayParams.__init__
    names = [n for n, p in inspect.signature(init).parameters.items() if p.default is not inspect.Parameter.empty]
    defaults = list(init.__defaults__)
    defaults[names.index("dashboard_agent_listen_port")] = 0
    init.__defaults__ = tuple(defaults)


def _loopback_only_cluster(address: str) -> bool:
    """Whether `address` is 127.0.0.1:PORT (or localhost) of a cluster that listens on loopback only, like ours.

    Ray rewrites a loopback address to the host's external one before connecting, which reaches a cluster
    started normally but never a loopback-only one: the driver then waits forever. So the rewrite is switched off
    (_loopback_only) exactly when the port answers on loopback and not on the external address.
    """
    url = urlparse(address if "://" in address else f"tcp://{address}")
    if url.hostname not in ("127.0.0.1", "localhost") or not url.port:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 80))  # no packet is sent: this only picks the outgoing interface, as Ray does
            external = s.getsockname()[0]
        except OSError:
            return True  # no external interface: loopback is all there is
    try:
        with socket.create_connection((external, url.port), timeout=2):
            return False
    except OSError:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_of_session(temp_dir: str) -> list[int]:
    """The processes of the Ray whose temp dir is `temp_dir`: those that name it in their command line, and those
    holding a file open under it (its log files): Ray's dashboard and runtime-env agents rename themselves
    (ray::DashboardAgent) and would escape a search by command line."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if temp_dir in (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                out.append(int(d.name))
                continue
            for fd in (d / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd).startswith(temp_dir + "/"):
                        out.append(int(d.name))
                        break
        except OSError:
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_embedded() -> list[str]:
    """Remove what a killed driver's private Ray left: its processes (found by their temp dir in their command line
    or their open files, killed by PID) and the temp dir itself. Only directories whose driver.pid names a dead
    process; another live sweep's is untouched."""
    import glob

    reaped = []
    for d in glob.glob(f"{EMBEDDED_PREFIX}*"):
        try:
            pid = int(Path(d, DRIVER_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # not ours (or a Ray we did not start): leave it
        if _alive(pid):
            continue
        for p in _pids_of_session(d):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)
        reaped.append(d)
    return reaped


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[RayInfo]:
    """Connect to the cluster at `address` (or RAY_ADDRESS), else start a private local Ray and stop it after.

    A process that is already connected (ray.is_initialized()) keeps its connection and is not shut down.
    """
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or _loopback_only_cluster(address):
        _loopback_only()  # before Ray is imported: the processes it starts read it at their import
    import ray

    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        yield RayInfo(address=ctx.gcs_address, dashboard_url=None, embedded=False)
        return
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
        reap_stale_embedded()
        _agent_port_free()
        tmp = f"{EMBEDDED_PREFIX}{secrets.token_hex(3)}"  # AF_UNIX socket paths must stay short
        os.makedirs(tmp)
        with open(os.path.join(tmp, DRIVER_FILE), "w") as f:
            f.write(f"{os.getpid()}\n")
        ctx = ray.init(address="local", _temp_dir=tmp, num_cpus=num_cpus, include_dashboard=True,
                       dashboard_host="127.0.0.1", dashboard_port=_free_port(), _node_ip_address="127.0.0.1",
                       logging_level="ERROR", log_to_driver=False)
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
