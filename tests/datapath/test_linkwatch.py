"""linkwatch: the running datapath follows the links on netlink events, not on its slow poll.

`lan_interface: auto` (up, Ethernet, a private or ULA address, not a WAN) and a `veth*` glob, in
a namespace of our own: a link that appears or gains an address while `follow` runs gets its
filter within a bound far below the safety poll's period (60 s here); one that loses its address
loses the filter, one that is deleted is forgotten; the stop leaves the namespace as it was."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dae_py.runtime.datapath import Datapath, linkwatch, tc
from dae_py.runtime.datapath._netns import open_iproute

from . import lab

pytestmark = pytest.mark.root
FWMARK, TABLE = 0x8000000, 2023
#: Far above what an event-driven refresh takes (~0.2 s; a few seconds with sysctls to write on
#: a loaded 2-core machine), far below the poll's 60 s.
BOUND = 10.0
log = logging.getLogger(__name__)


def ingress_filters(ns: str, name: str) -> list[object]:
    with open_iproute(ns) as ipr:
        found = ipr.link_lookup(ifname=name)
        return [f for f in tc.list_filters(ipr, found[0], tc.INGRESS) if (f.name or "").startswith(tc.NAME_PREFIX)] \
            if found else []


async def until(check: Callable[[], object], what: str) -> float:
    """Seconds until `check()` is true; fails past BOUND. (Checks and changes run in threads:
    pyroute2's sync API runs an event loop of its own, which cannot nest in ours.)"""
    t0 = time.monotonic()
    while not await asyncio.to_thread(check):
        if time.monotonic() - t0 > BOUND:
            raise AssertionError(f"{what}: not within {BOUND} s")
        await asyncio.sleep(0.02)
    took = time.monotonic() - t0
    log.info("%s: %.3f s", what, took)
    return took


def del_addr(ns: str, ifname: str, address: str, prefixlen: int) -> None:
    with open_iproute(ns) as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname=ifname)[0], address=address, prefixlen=prefixlen)


def del_link(ns: str, ifname: str) -> None:
    with open_iproute(ns) as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=ifname)[0])


def test_links_are_followed_on_events(ns: str, state_path: Path, prog_fds: dict[str, int]) -> None:
    lab.make_gateway(ns)
    lab.add_veth(ns, "vethx1", "pvx1")  # at start, every entry must match something
    before = lab.snapshot(ns)
    dp = Datapath(lan=["auto", "veth*"], wan="auto", fwmark=FWMARK, table=TABLE, netns=ns,
                  state_path=state_path)
    dp.setup(prog_fds["a"], prog_fds["b"])
    # lan0 has 10.98.1.1; lan1 no address; wan0 is the WAN (default route), never a LAN
    assert [i.name for i in dp.lan_interfaces] == ["lan0", "vethx1"] and [i.name for i in dp.wan_interfaces] == ["wan0"]

    async def scenario() -> list[float]:
        watcher = asyncio.create_task(linkwatch.follow(dp, interval=60))
        took = []
        try:
            await asyncio.sleep(0.2)  # the first refresh
            await asyncio.to_thread(lab.add_veth, ns, "vethx0", "pvx0")  # a glob match appears
            took.append(await until(lambda: ingress_filters(ns, "vethx0"), "veth* attached"))
            await asyncio.to_thread(lab.add_addr, ns, "lan1", "fd98:1::1", 64)  # lan1: a LAN for `auto` (ULA)
            took.append(await until(lambda: ingress_filters(ns, "lan1"), "auto LAN attached"))
            await asyncio.to_thread(del_addr, ns, "lan1", "fd98:1::1", 64)
            took.append(await until(lambda: not ingress_filters(ns, "lan1"), "auto LAN detached"))
            await asyncio.to_thread(del_link, ns, "vethx0")
            await until(lambda: "vethx0" not in {i.name for i in dp.lan_interfaces}, "veth* forgotten")
            assert all(e.get("ifname") != "vethx0" or e["kind"] == "sysctl" for e in dp._state.entries)
        finally:
            watcher.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watcher
        return took

    try:
        took = asyncio.run(scenario())
        assert max(took) < BOUND
    finally:
        report = dp.teardown()
    assert report.ok, report.failed
    assert lab.diff(before, lab.snapshot(ns)) == ""


def test_events_socket_wakes_on_a_new_link(ns: str) -> None:
    """The subscription itself: a link created in the namespace makes the socket readable."""
    async def main() -> bool:
        events = linkwatch.Events(linkwatch.open_events(ns))
        try:
            await asyncio.to_thread(lab.add_veth, ns, "ev0", "ev1")
            return await events.wait(BOUND)
        finally:
            events.close()

    assert asyncio.run(main())
