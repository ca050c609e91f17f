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


class ConnTracker:
    """The table of live connections; ids are UUID-shaped strings, as mihomo's."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.prefix = str(uuid.uuid4())[:23]
        self.conns: dict[int, Tracked] = {}  # by seq
        self.total = 0  # connections ever tracked (and the next seq)
        self._by_key: dict[int, Tracked] = {}  # id(the relay's flow object) -> record

    def open(self, network: str, src: Addr, dst: Addr, outbound: str, node: str, why: str) -> Tracked:
        self.total = seq = self.total + 1
        rec = Tracked(seq, self.prefix, network, src, dst, outbound, node, why, self.clock())
        self.conns[seq] = rec
        return rec

    def bind(self, rec: Tracked, key: object, closer: Callable[[], object]) -> None:
        """`key`: the relay's object for the flow (its end callback hands it to `ended_key`)."""
        rec.closer = closer
        self._by_key[id(key)] = rec

    def ended_key(self, key: object) -> None:
        rec = self._by_key.pop(id(key), None)
        if rec is not None:
            self.ended(rec)

    def ended(self, rec: Tracked) -> None:
        self.conns.pop(rec.seq, None)
        rec.closer = None

    def find(self, conn_id: str) -> Tracked | None:
        prefix, _, seq = conn_id.rpartition("-")
        if prefix != self.prefix:
            return None
        try:
            return self.conns.get(int(seq, 16))
        except ValueError:
            return None

    def __iter__(self) -> Iterator[Tracked]:
        return iter(list(self.conns.values()))

    def __len__(self) -> int:
        return len(self.conns)

    def close(self, conn_id: str) -> bool:
        rec = self.find(conn_id)
        if rec is None:
            return False
        rec.close()
        self.ended(rec)
        return True

    def close_all(self) -> int:
        recs = list(self.conns.values())
        for rec in recs:
            rec.close()
            self.ended(rec)
        return len(recs)
