"""The loop's FdPoller: one epoll set for the relay's sockets, tolerant of stale views."""
from __future__ import annotations

import asyncio
import socket

from dae_py.runtime.net.poller import IN, OUT, poller_for
from tests.proxy.test_proxy import run


class TestPoller:
    def test_watch_modify_remove_and_stale_views(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            poller = poller_for(loop)
            assert poller_for(loop) is poller
            a, b = socket.socketpair()
            a.setblocking(False)
            got: list[int] = []
            fired = asyncio.Event()

            def handler(events: int) -> None:
                got.append(events)
                poller.modify(a.fileno(), IN)  # writable was a one-off
                fired.set()

            poller.watch(a.fileno(), OUT, handler)
            await asyncio.wait_for(fired.wait(), 2)
            assert got[0] & OUT
            fired.clear()
            b.send(b"x")
            await asyncio.wait_for(fired.wait(), 2)
            assert got[-1] & IN
            poller.remove(a.fileno())
            poller.remove(a.fileno())  # twice: no error
            poller.watch(a.fileno(), IN, handler)
            # closed behind the poller's back: remove and watch cope
            fd = a.fileno()
            a.close()
            poller.remove(fd)
            c, d = socket.socketpair()
            poller.watch(c.fileno(), IN, handler)
            poller.remove(c.fileno())
            for s in (b, c, d):
                s.close()

        run(scenario)
