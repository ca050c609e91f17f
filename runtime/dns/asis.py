"""`asis` for hijacked queries: ask the resolver the client itself asked.

A hijacked query carries its original destination (the resolver address the client sent it
to); the hijack listener puts it in `ORIGIN` (a context variable, so it follows the query
through the module's tasks and its in-flight deduplication without changing their
signatures). Request routing's `asis` then means that server, as in dae. The query goes out
with the runtime's so_mark, so the program never hijacks it again (no loop). A dns.bind client
asked the gateway itself: `ORIGIN` is None and `asis` has no server (the module says SERVFAIL).
"""
from __future__ import annotations

from collections import OrderedDict
from contextvars import ContextVar

from .upstreams import Upstream, make

#: (address, port) the client sent the query being answered to; None: not hijacked.
ORIGIN: ContextVar[tuple[str, int] | None] = ContextVar("dae_dns_origin", default=None)
MAX_ORIGINS = 256


class AsisUpstreams:
    """One `tcp+udp` upstream per original resolver address (UDP first, TCP when the answer is
    truncated), the least recently used dropped past MAX_ORIGINS."""

    def __init__(self, so_mark: int, timeout: float, limit: int = MAX_ORIGINS) -> None:
        self.so_mark = so_mark
        self.timeout = timeout
        self.limit = limit
        self._ups: OrderedDict[tuple[str, int], Upstream] = OrderedDict()

    async def current(self) -> Upstream | None:
        """The upstream for the query being answered (None when it was not hijacked)."""
        origin = ORIGIN.get()
        if origin is None:
            return None
        up = self._ups.get(origin)
        if up is not None:
            self._ups.move_to_end(origin)
            return up
        up = make({"name": "asis", "scheme": "tcp+udp", "host": origin[0], "port": origin[1]},
                  self.so_mark, self.timeout)  # no route: the marked query goes where the client sent it
        await up.resolve()  # an IP literal: no lookup, it only makes the marked backend
        self._ups[origin] = up
        while len(self._ups) > self.limit:
            _, old = self._ups.popitem(last=False)
            await old.close()
        return up

    async def close(self) -> None:
        for up in self._ups.values():
            await up.close()
        self._ups.clear()
