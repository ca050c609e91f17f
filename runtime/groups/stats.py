"""Per-node, per-check-kind liveness and latency, and the figure each policy ranks by."""
from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from .spec import Policy


class Check(str, enum.Enum):
    """What a node is judged on: TCP (HTTP check, dials), UDP (DNS over UDP ASSOCIATE), and DNS
    over TCP (the DNS check of nodes without UDP)."""

    TCP = "tcp"
    UDP = "udp"
    DNS_TCP = "dns_tcp"


@dataclass
class NodeStats:
    """Results of one node for one check kind. Latencies in seconds; a failure counts as the
    check timeout in the averages (a flaky node ranks behind a steady one)."""

    timeout: float = 10.0
    alive: bool = True
    checked: bool = False
    last: float | None = None
    window: deque[float] = field(default_factory=lambda: deque(maxlen=10))
    moving_avg: float | None = None
    last_error: str | None = None

    def record(self, latency: float | None, error: str | None = None) -> None:
        self.checked = True
        value = self.timeout if latency is None else latency
        self.window.append(value)
        self.moving_avg = value if self.moving_avg is None else (self.moving_avg + value) / 2
        if latency is None:
            self.alive = False
            self.last_error = error
        else:
            self.alive = True
            self.last = latency
            self.last_error = None

    def metric(self, policy: Policy) -> float:
        """What `policy` ranks by; +inf while unknown."""
        if policy is Policy.MIN:
            return self.last if self.last is not None else math.inf
        if policy is Policy.MIN_AVG10:
            return sum(self.window) / len(self.window) if self.window else math.inf
        if policy is Policy.MIN_MOVING_AVG:
            return self.moving_avg if self.moving_avg is not None else math.inf
        return math.inf
