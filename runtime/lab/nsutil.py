"""Small helpers to act inside a named network namespace without forking.

Why threads and `setns(2)`: a thread may switch its own network namespace, and a socket keeps
the namespace it was created in for its whole life. So a short-lived thread that enters the
namespace can create sockets or read and write `/proc/sys/net` there for the calling process,
at a cost of about a millisecond, where pyroute2's `create_socket` or `nsenter sysctl` fork a
process each time. Python 3.11 has no `os.setns`, hence ctypes.
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

T = TypeVar("T")

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> Path:
    """Path of the bind-mounted namespace file that `ip netns` and pyroute2 use."""
    return NETNS_DIR / name


def enter_netns(name: str) -> None:
    """Move the calling thread into namespace `name` for good (a thread of its own, as
    `call_in_netns` makes, or one that runs an event loop there)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({name}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in_netns(name: str | None, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run `fn()` in a fresh thread that has entered namespace `name` (None: ours).

    The thread exits afterwards, so the caller's own namespace never changes. Exceptions of
    `fn` are re-raised in the caller.
    """
    if name is None:
        return fn()
    value: list[T] = []  # fn()'s result, or
    error: list[BaseException] = []  # what it raised

    def runner() -> None:
        try:
            enter_netns(name)
            value.append(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            error.append(exc)

    thread = threading.Thread(target=runner, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"call in netns {name} did not finish within {timeout}s")
    if error:
        raise error[0]
    return value[0]


def socket_in_netns(
    name: str | None,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,  # noqa: A002 - mirrors socket.socket
    proto: int = 0,
) -> socket.socket:
    """A socket that lives in namespace `name`, usable from any thread of this process."""
    return call_in_netns(name, lambda: socket.socket(family, type, proto))


def sysctl_path(key: str) -> Path:
    """/proc/sys path of a sysctl; resolved per namespace by whichever thread opens it."""
    # Dotted form as sysctl(8) takes it; a key given with slashes is used as is.
    rel = key if "/" in key else key.replace(".", "/")
    return Path("/proc/sys") / rel


def read_sysctl(name: str | None, key: str) -> str:
    """Value of a sysctl as seen from namespace `name` (net.* keys are per namespace)."""
    return call_in_netns(name, lambda: sysctl_path(key).read_text().strip())


def write_sysctl(name: str | None, key: str, value: str | int) -> None:
    """Set a sysctl inside namespace `name` (writes only that namespace's net.* copy)."""

    def write() -> None:
        with open(sysctl_path(key), "w") as f:
            f.write(str(value))

    call_in_netns(name, write)


def netns_inode(name: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) identifying the namespace, or None if it has no file any more."""
    try:
        st = os.stat(netns_path(name))
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def pid_netns(pid: int) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the network namespace process `pid` is in, None if it is gone."""
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ESRCH, errno.EACCES):
            return None
        raise
    return st.st_dev, st.st_ino


def pids_in_netns(name: str) -> list[int]:
    """Every process whose network namespace is `name`.

    Why: a process left in a namespace keeps the namespace (and its veths) alive after the
    /run/netns file is gone, and a daemon may escape any process group we track, so teardown
    finds them by namespace, like `ip netns pids`.
    """
    ident = netns_inode(name)
    if ident is None:
        return []
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid != me and pid_netns(pid) == ident:
            pids.append(pid)
    return pids
