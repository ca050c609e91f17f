"""Follow the interfaces while the gateway runs: a `br-*` created after start, a LAN that gains a
private address (`lan_interface: auto`), a WAN that gains the default route (`wan_interface:
auto`) get their programs, and ones that go lose them (Datapath.refresh).

Woken by netlink: a NETLINK_ROUTE socket subscribed to the link, address and route multicast
groups (v4 and v6) becomes readable when a link comes, goes or changes state, an address is
added or removed, or a route changes. The messages are not parsed: any of them only means
"look again", and the refresh re-reads the whole state (two dumps), so nothing is lost between
a message and the next. A short settle time lets a burst (a bridge created, set up, given an
address) end in one refresh. A slow poll stays as a safety net: a subscription can overflow
(ENOBUFS, when the runtime was too busy to read) and then says only that something was missed,
which is answered the same way, with a refresh.

The socket is a plain `socket.socket(AF_NETLINK)` rather than pyroute2's: nothing is decoded,
and asyncio can wait on its descriptor directly (pyroute2's sync API would need a thread of its
own). It is opened in the datapath's namespace (`run_in_netns`), where it stays bound.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import time
from typing import Any

from ._netns import run_in_netns

log = logging.getLogger(__name__)

#: The safety net's period: a refresh at least this often, events or not.
DEFAULT_INTERVAL = 30.0
#: How long a burst of events may go on before the refresh runs.
SETTLE = 0.05
#: rtnetlink multicast groups (uapi/linux/rtnetlink.h, the RTMGRP_* bit masks).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE
_RCVBUF = 1 << 20


def open_events(netns: str | None, groups: int = GROUPS) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket in `netns`, subscribed to `groups`."""
    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
            sock.bind((0, groups))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    return run_in_netns(netns, make)


def drain(sock: socket.socket) -> int:
    """Read what is queued; the number of messages (datagrams) read. An overflow (ENOBUFS)
    counts as one: something was missed, which a refresh answers."""
    n = 0
    while True:
        try:
            if not sock.recv(65536):
                return n
        except BlockingIOError:
            return n
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            log.debug("link events overflowed: refreshing all the same")  # the refresh re-reads everything
        n += 1


class Events:
    """Wake-ups from the netlink socket, for one asyncio loop."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._ready = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._watching = False
        self._watch()

    def _watch(self) -> None:
        if not self._watching:
            self._loop.add_reader(self.sock.fileno(), self._on_readable)
            self._watching = True

    def _on_readable(self) -> None:
        # readiness is level-triggered: stop watching until drained, or the loop would call this
        # on every turn of the settle time
        self._loop.remove_reader(self.sock.fileno())
        self._watching = False
        self._ready.set()

    async def wait(self, timeout: float) -> bool:
        """True when events arrived (drained after SETTLE), False when `timeout` passed."""
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        await asyncio.sleep(SETTLE)
        self._ready.clear()
        drain(self.sock)
        self._watch()
        return True

    def close(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.sock.fileno())
            self._watching = False
        self.sock.close()


async def follow(datapath: Any, interval: float = DEFAULT_INTERVAL) -> None:
    """Refresh on every burst of link/address/route events, and every `interval` seconds
    regardless, until cancelled; a failed refresh is logged and retried at the next wake-up."""
    events: Events | None = None
    try:
        events = Events(open_events(getattr(datapath, "netns", None)))
    except OSError as exc:  # no netlink (a sandbox): the poll alone still follows the links
        log.warning("no link events (%s): following the interfaces every %.0f s", exc, interval)
    try:
        first = events is not None  # what changed between the set-up and the subscription
        while True:
            if first:
                first = False
            elif events is not None:
                await events.wait(interval)
            else:
                await asyncio.sleep(interval)
            if not datapath.active:
                return
            await _refresh(datapath, interval)
    finally:
        if events is not None:
            events.close()


async def _refresh(datapath: Any, interval: float) -> None:
    # shielded: a stop that cancels us mid-refresh waits for the thread, so the teardown never
    # runs beside a refresh that is still attaching
    t0 = time.monotonic()
    refresh = asyncio.ensure_future(asyncio.to_thread(datapath.refresh))
    try:
        await asyncio.shield(refresh)
        log.debug("interfaces refreshed in %.3f s", time.monotonic() - t0)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await refresh
        raise
    except Exception as exc:  # noqa: BLE001 - the gateway keeps running on the interfaces it has
        log.warning("following the interfaces failed (retrying at the next change, or in %.0f s): %s",
                    interval, exc)
