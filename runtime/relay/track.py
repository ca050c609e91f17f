"""Live relayed connections, for the controller's /connections (list, close one or all).

Off unless someone asks: `TcpRelay.tracker` is None by default and the relay's per-flow path
then pays one attribute test. With a tracker set (the controller does, when it runs), every
established flow gets a `Tracked` record: its addresses, outbound, node and rule, its own byte
counts (it wraps the outbound's counting callbacks), its start time, and how to close it. The
record leaves the table when the flow ends, whoever ended it.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .flow import Addr

Count = Callable[[int], None]


def _nothing(n: int) -> None:
    """Where a record counts before `counting` gives it the outbound's callbacks."""


@dataclass(eq=False, slots=True)
class Tracked:
    """One live connection as the controller shows it."""

    seq: int  # the tracker's counter; `id` is its UUID-shaped form
    prefix: str
    network: str  # "tcp" | "udp"
    src: Addr
    dst: Addr
    outbound: str
    node: str
    why: str  # the relay's suffix for the flow (" (rule 3 (config.yaml:33))", " (fallback)")
    start: float  # time.time() of establishment
    upload: int = 0
    download: int = 0
    closer: Callable[[], object] | None = field(default=None, repr=False)
    key: object = field(default=None, repr=False)  # the relay's object for the flow, while live
    _up: Count = field(default=_nothing, repr=False)
    _down: Count = field(default=_nothing, repr=False)

    @property
    def rule(self) -> str:
        """The flow's rule label ("rule 3 (config.yaml:33)", "fallback"; "-" when unknown)."""
        return self.why.strip().removeprefix("(").removesuffix(")") or "-"

    @property
    def id(self) -> str:
        """UUID-shaped, as mihomo's ids: the tracker's random prefix and this flow's number
        (formatted only when listed: a uuid4 per flow would cost more than the rest of this)."""
        return f"{self.prefix}-{self.seq:012x}"

    def counting(self, up: Count, down: Count) -> tuple[Count, Count]:
        """Callbacks that count into this record and then into the outbound's (bound methods,
        not closures: cheaper to make, once per flow)."""
        self._up = up
        self._down = down
        return self.add_up, self.add_down

    def add_up(self, n: int) -> None:
        self.upload += n
        self._up(n)

    def add_down(self, n: int) -> None:
        self.download += n
        self._down(n)

    def close(self) -> None:
        """Really end the flow: both sockets closed (its end callback removes the record)."""
        if self.closer is not None:
            self.closer()
        elif self.key is not None and self.key is not self:
            close = getattr(self.key, "close", None)
            if close is not None:
                close()


class ConnTracker:
    """The table of live connections; ids are UUID-shaped strings, as mihomo's.

    One dict, keyed by the id() of the relay's object for the flow (the record's own until
    `bind`): an entry per live flow is most of what tracking costs (tests/relay/test_track.py
    counts it), so there is no second index by id; `find` (a DELETE of one connection) walks."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.prefix = str(uuid.uuid4())[:23]
        self.total = 0  # connections ever tracked (and the next seq)
        self._live: dict[int, Tracked] = {}  # id(rec.key) -> record

    def open(self, network: str, src: Addr, dst: Addr, outbound: str, node: str, why: str) -> Tracked:
        self.total = seq = self.total + 1
        rec = Tracked(seq, self.prefix, network, src, dst, outbound, node, why, self.clock())
        rec.key = rec
        self._live[id(rec)] = rec
        return rec

    def bind(self, rec: Tracked, key: object, closer: Callable[[], object] | None = None) -> None:
        """`key`: the relay's object for the flow (its end callback hands it to `ended_key`);
        `closer` ends the flow (None: `key.close()`, without a bound method kept per flow)."""
        rec.closer = closer
        if key is not rec.key and self._live.pop(id(rec.key), None) is rec:
            self._live[id(key)] = rec
        rec.key = key

    def ended_key(self, key: object) -> None:
        rec = self._live.get(id(key))
        if rec is not None and rec.key is key:
            self.ended(rec)

    def ended(self, rec: Tracked) -> None:
        key = rec.key
        if key is not None:
            if self._live.get(id(key)) is rec:
                del self._live[id(key)]
            rec.key = None
        rec.closer = None

    @property
    def conns(self) -> dict[int, Tracked]:
        """The live records by seq (a copy: for callers that index them)."""
        return {rec.seq: rec for rec in self._live.values()}

    def find(self, conn_id: str) -> Tracked | None:
        prefix, _, seq = conn_id.rpartition("-")
        if prefix != self.prefix:
            return None
        try:
            wanted = int(seq, 16)
        except ValueError:
            return None
        for rec in self._live.values():
            if rec.seq == wanted:
                return rec
        return None

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self._live.values()))

    def __len__(self) -> int:
        return len(self._live)

    def close(self, conn_id: str) -> bool:
        rec = self.find(conn_id)
        if rec is None:
            return False
        rec.close()
        self.ended(rec)
        return True

    def close_all(self) -> int:
        recs = list(self._live.values())
        for rec in recs:
            rec.close()
            self.ended(rec)
        return len(recs)
