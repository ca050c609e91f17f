"""Run a function inside a network namespace without moving the process.

`setns(CLONE_NEWNET)` changes the namespace of the *calling thread* only. Doing it on the main
thread would silently move every later socket, netlink call and `/proc/sys/net` access of the
whole runtime into that namespace (and back again only if every code path remembered to undo
it). So the switch is confined to a fresh, short-lived thread: it enters the namespace, runs the
function, and exits; the namespace reference dies with the thread. A new `threading.Thread` is a
new OS thread every time (CPython never pools them), so no other code ever runs in the switched
thread.

`/proc/sys/net/...` resolves against the network namespace of the thread that opens the file,
which is what makes per-namespace sysctls readable and writable from such a thread. (By
contrast `/proc/net` is a link to `/proc/self/net`, i.e. the thread-group leader's namespace:
don't use it here.)

Only the network namespace is switched: the mount namespace (and so `/sys/fs/bpf` and the state
file) stays the caller's, unlike `ip netns exec`, which remounts `/sys`.
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # only for the annotation: open_iproute imports it where it is used
    from pyroute2.iproute import IPRoute

T = TypeVar("T")

NETNS_RUN_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.setns.restype = ctypes.c_int


class NetnsNotFound(FileNotFoundError):
    """The named network namespace does not exist (any more)."""


def netns_path(netns: str) -> Path:
    """`NAME` -> /run/netns/NAME (as `ip netns` names them); an absolute path stays as given."""
    return Path(netns) if os.path.isabs(netns) else NETNS_RUN_DIR / netns


def netns_exists(netns: str | None) -> bool:
    return netns is None or netns_path(netns).exists()


def run_in_netns(netns: str | None, fn: Callable[..., T], *args: object) -> T:
    """Call `fn(*args)` with the calling thread's view of the network switched to `netns`.

    `None` means "the caller's own namespace": `fn` runs directly, in the calling thread.
    Exceptions raised by `fn` propagate to the caller.
    """
    if netns is None:
        return fn(*args)
    path = netns_path(netns)
    try:
        nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsNotFound(f"network namespace {netns!r} does not exist ({path})") from None

    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            if _libc.setns(nsfd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({path}): {os.strerror(err)}")
            result.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread below
            error.append(exc)

    try:
        thread = threading.Thread(target=body, name=f"netns:{netns}", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(nsfd)
    if error:
        raise error[0]
    return result[0]


def open_iproute(netns: str | None) -> IPRoute:
    """An `IPRoute` bound to `netns` (or the caller's namespace for None).

    `flags=0` matters: pyroute2's default (`O_CREAT`) silently *creates* a missing namespace,
    which would turn a typo, or a cleanup after the namespace was deleted, into a fresh empty
    namespace. Here a missing namespace is an error (`NetnsNotFound`).
    """
    from pyroute2.iproute import IPRoute

    if netns is None:
        return IPRoute()
    if not netns_path(netns).exists():
        raise NetnsNotFound(f"network namespace {netns!r} does not exist ({netns_path(netns)})")
    return IPRoute(netns=str(netns_path(netns)) if os.path.isabs(netns) else netns, flags=0)
