"""`asis` for hijacked queries: ask the resolver the client itself asked.

A hijacked query carries its original destination (the resolver address the client sent it
to); the hijack listener puts it in `ORIGIN` (a context variable, so it follows the query
through the module's tasks and its in-flight deduplication without changing their
signatures) and hands it to the callback miss path (fastmiss.py) as an argument. Request
routing's `asis` then means that server, as in dae. The query goes out with the runtime's
so_mark, so the program never hijacks it again (no loop). A dns.bind client asked the gateway
itself: `ORIGIN` is None and `asis` has no server (the module says SERVFAIL).
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from contextvars import ContextVar

from .upstreams import Upstream, make

Origin = tuple[str, int]  # (address, port) a hijacked query was sent to
#: The origin of the query being answered; None: not hijacked.
ORIGIN: ContextVar[Origin | None] = ContextVar("dae_dns_origin", default=None)
MAX_ORIGINS = 256


class AsisUpstreams:
    """One `tcp+udp` upstream per original resolver address (UDP first, TCP when the answer is
    truncated or the UDP half of the timeout passes), the least recently used dropped past
    MAX_ORIGINS. A dropped one is closed only one timeout later: the queries it has out (the
    callback path's among them, whose timers its close would cancel) end first."""

    def __init__(self, so_mark: int, timeout: float, limit: int = MAX_ORIGINS) -> None:
        self.so_mark = so_mark
        self.timeout = timeout
        self.limit = limit
        self._ups: OrderedDict[Origin, Upstream] = OrderedDict()
        self._retired: list[tuple[float, Upstream]] = []  # (loop time to close it at, the upstream)

    def ready(self, origin: Origin) -> Upstream | None:
        """The upstream of `origin` if one was made already (no await: the callback path's
        question); None sends the query to the general path, which makes it (`current`)."""
        up = self._ups.get(origin)
        if up is not None:
            self._ups.move_to_end(origin)
        return up

    async def current(self) -> Upstream | None:
        """The upstream for the query being answered (None when it was not hijacked)."""
        origin = ORIGIN.get()
        if origin is None:
            return None
        up = self.ready(origin)
        if up is not None:
            return up
        up = make({"name": "asis", "scheme": "tcp+udp", "host": origin[0], "port": origin[1]},
                  self.so_mark, self.timeout)  # no route: the marked query goes where the client sent it
        await up.resolve()  # an IP literal: no lookup, it only makes the marked backend
        self._ups[origin] = up
        now = asyncio.get_running_loop().time()
        while len(self._ups) > self.limit:
            _, old = self._ups.popitem(last=False)
            self._retired.append((now + old.timeout, old))
        while self._retired and self._retired[0][0] <= now:
            await self._retired.pop(0)[1].close()
        return up

    async def close(self) -> None:
        for up in [*self._ups.values(), *(old for _, old in self._retired)]:
            await up.close()
        self._ups.clear()
        self._retired.clear()
