"""Per-outbound counters: flows, bytes up (client -> upstream) and down, refusals, drops."""
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


class RelayStats:
    def __init__(self) -> None:
        self.by_outbound: dict[str, Counters] = {}

    def __getitem__(self, outbound: str) -> Counters:
        counters = self.by_outbound.get(outbound)
        if counters is None:
            counters = self.by_outbound[outbound] = Counters()
        return counters

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: asdict(c) for name, c in self.by_outbound.items()}

    def __str__(self) -> str:
        """One log-friendly line: `proxy=3f(1 active)/12.0K up/1.5M down/0 refused ...`."""
        return " ".join(
            f"{name}={c.flows}f({c.active} active)/{_size(c.bytes_up)} up/"
            f"{_size(c.bytes_down)} down/{c.refused} refused"
            + (f"/{c.dropped} dropped" if c.dropped else "")
            for name, c in sorted(self.by_outbound.items())) or "no flows"


def _size(n: int) -> str:
    for unit in ("", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.1f}{unit}" if unit else f"{n}B"
        n /= 1024  # type: ignore[assignment]
    return f"{n}"
