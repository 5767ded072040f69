"""A process group listens on the address it was given, never on every interface (nor on the LAN for one host).

torch's TCPStore server binds the wildcard address whatever host it is told (its libuv and its legacy backend
alike), so a dp=2 trial on a laptop listened on every interface of the machine. The store accepts a socket that is
already listening instead (`master_listen_fd`); `bound_stores()` hands it one bound to the host alone, for every
store created while it is active: those of torch's elastic launcher (launcher/local.py: its rendezvous and the store
its workers share) and the one `init_process_group` makes under srun (distributed.setup).

The process group's own transport listens too: gloo (and NCCL's bootstrap) on the address this host's name resolves
to, a LAN address on most machines. When every rank runs on this host, `local_transport_on_loopback()` names the
loopback interface to both (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME), unless the user named one.

Only a host given as an IP address (or `localhost`) is bound: a host name may resolve to a loopback address here
(Debian maps its own name to 127.0.1.1) and to the node's real address on the other nodes, and a store bound to the
former would be out of their reach. Such a store keeps torch's wildcard binding, as does one whose address cannot be
bound here (torch then reports the error it always did).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import ipaddress
import os
import socket

import torch.distributed as dist

_TORCH_STORE = dist.TCPStore


def _bound_socket(host: str, port: int) -> tuple[int, int] | None:
    """(fd, port) of a socket listening on `host`:`port` (port 0: a free one), or None where `host` is not an
    address or cannot be bound."""
    host = "127.0.0.1" if host == "localhost" else host
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's own server socket
        sock.bind((host, port))
        sock.listen(socket.SOMAXCONN)
    except OSError:
        sock.close()
        return None
    port = sock.getsockname()[1]
    return sock.detach(), port  # the store owns the descriptor from here on


class BoundTCPStore(_TORCH_STORE):
    """torch's TCPStore, whose server (is_master) listens on `host_name` only (module doc)."""

    def __init__(self, host_name: str, port: int, world_size: int | None = None, is_master: bool = False,
                 timeout: datetime.timedelta = datetime.timedelta(seconds=300), wait_for_workers: bool = True,
                 multi_tenant: bool = False, master_listen_fd: int | None = None, use_libuv: bool = True):
        if is_master and master_listen_fd is None and (bound := _bound_socket(host_name, port)) is not None:
            master_listen_fd, port = bound
        super().__init__(host_name, port, world_size, is_master, timeout, wait_for_workers, multi_tenant,
                         master_listen_fd, use_libuv)


def local_transport_on_loopback() -> None:
    """For a process group whose ranks all run on this host: gloo's and NCCL's sockets on the loopback interface."""
    names = {name for _, name in socket.if_nameindex()}
    loopback = next((name for name in ("lo", "lo0") if name in names), None)  # Linux, macOS
    if loopback is not None:
        for var in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(var, loopback)


@contextlib.contextmanager
def bound_stores():
    """The TCPStores torch creates in this process while active are BoundTCPStores: those of the elastic launcher and
    of init_process_group. torch names the class in three modules: the package (dist.TCPStore, read at each call)
    and two that imported the name itself. Not thread-safe: one launch per process at a time."""
    modules = (dist, importlib.import_module("torch.distributed.rendezvous"),  # the package exports a function of
               importlib.import_module("torch.distributed.elastic.rendezvous.c10d_rendezvous_backend"))  # that name
    saved = [m.TCPStore for m in modules]
    for m in modules:
        m.TCPStore = BoundTCPStore
    try:
        yield
    finally:
        for m, cls in zip(modules, saved):
            m.TCPStore = cls
