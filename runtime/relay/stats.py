"""Per-outbound counters: flows, bytes up (client -> upstream) and down, refusals, drops; and
the relay's guards, which act before any outbound is chosen."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    flows: int = 0
    active: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    refused: int = 0
    dropped: int = 0

    def add_up(self, n: int) -> None:
        self.bytes_up += n

    def add_down(self, n: int) -> None:
        self.bytes_down += n


@dataclass
class Guards:
    """What the relay turned away by itself (docs/hardening.md)."""

    self_addressed: int = 0  # datagrams/flows addressed to the relay's own port: refused
    udp_reply_limited: int = 0  # UDP replies dropped: past the reply-socket bound
    udp_client_limited: int = 0  # UDP datagrams dropped: a new client past the client bound
    udp_client_evicted: int = 0  # idle UDP clients ended early to admit a new one

    def __str__(self) -> str:
        return " ".join(f"{k.replace('_', '-')}={v}" for k, v in asdict(self).items() if v)


class RelayStats:
    def __init__(self) -> None:
        self.by_outbound: dict[str, Counters] = {}
        self.guards = Guards()

    def __getitem__(self, outbound: str) -> Counters:
        counters = self.by_outbound.get(outbound)
        if counters is None:
            counters = self.by_outbound[outbound] = Counters()
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        """Per outbound (the guards are `self.guards`)."""
        return {name: asdict(c) for name, c in self.by_outbound.items()}

    def __str__(self) -> str:
        """One log-friendly line: `proxy=3f(1 active)/12.0K up/1.5M down/0 refused ...`."""
        text = " ".join(
            f"{name}={c.flows}f({c.active} active)/{_size(c.bytes_up)} up/"
            f"{_size(c.bytes_down)} down/{c.refused} refused"
            + (f"/{c.dropped} dropped" if c.dropped else "")
            for name, c in sorted(self.by_outbound.items())) or "no flows"
        guards = str(self.guards)
        return f"{text}; guards: {guards}" if guards else text


def _size(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.1f}{unit}" if unit else f"{n}B"
        n /= 1024
    return f"{n}"
