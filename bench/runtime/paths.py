"""Which proxy takes the proxied port in the gateway namespace: ours, redsocks, v2ray or none.

Why one at a time: dae-runtime's tc program, redsocks' nft `redirect` (which turns conntrack
on for the namespace) and v2ray's nft `tproxy` + fwmark route would each add their cost to the
others' packets if they were all in place. So the benchmarks keep all three processes started
(redsocks and v2ray idle, listening) and switch only what steers packets: dae-runtime is started
for the states that need its program and stopped otherwise; a peer's nft table (and for v2ray
its policy route) exists only while that peer's state is on. Every mode reaches the same danted
and the same servers behind it, so their latencies and CPU are comparable.

Leaving a peer's state reads its nft SYN counter first: the connections that peer took, which
the benchmark compares with the connections it opened (a missing rule would otherwise send the
"peer" block straight to the server and look fast).
"""
from __future__ import annotations

import time
from typing import Any

from bench.runtime.common import (
    nft,
    nft_counted,
    nft_redsocks,
    nft_v2ray,
    v2ray_policy_route,
)

STATES = ("none", "dae", "redsocks", "v2ray")
TABLES = {"redsocks": "bench_redsocks", "v2ray": "bench_v2ray"}


class PathSwitch:
    """`ensure(state)` makes `state` the only thing steering `proxy_port` in the gateway;
    `close()` returns to "none" and removes every table and rule it added (also after errors)."""

    def __init__(self, lab: Any, gw: Any, proxy_port: int, peers: dict[str, Any]) -> None:
        self.lab = lab
        self.gw = gw
        self.proxy_port = proxy_port
        self.peers = peers  # "redsocks" / "v2ray" -> started Peer
        self.state = "none"
        self.taken: dict[str, int] = {name: 0 for name in TABLES}  # connections each peer's rule took
        self.kernel_lines: list[str] = []  # dae-runtime's last "kernel:" counters line, per stop
        self.gw_starts: list[float] = []  # seconds per dae-runtime start

    def pid(self, state: str) -> int | None:
        """The process doing the proxying in `state` (None for "none")."""
        if state == "dae":
            return self.gw.proc.pid if self.gw.proc is not None and self.gw.proc.poll() is None else None
        peer = self.peers.get(state)
        return peer.pid if peer is not None else None

    def ensure(self, state: str) -> bool:
        """Switch to `state`; True when something changed (the caller may warm the path up)."""
        if state not in STATES:
            raise ValueError(f"unknown gateway state {state!r}")
        if state == self.state:
            return False
        self._leave()
        if state == "dae":
            t0 = time.monotonic()
            self.gw.start()
            self.gw_starts.append(time.monotonic() - t0)
        elif state in TABLES:
            if state not in self.peers:
                raise RuntimeError(f"{state} was not started for this run")
            if state == "v2ray":
                v2ray_policy_route(self.lab, add=True)
            nft(self.lab, (nft_redsocks if state == "redsocks" else nft_v2ray)(self.lab.topo, self.proxy_port))
        self.state = state
        return True

    def _leave(self) -> None:
        state, self.state = self.state, "none"
        if state == "dae":
            self.gw.stop()
            time.sleep(0.2)
            lines = [line for line in self.gw.log_text().splitlines() if " kernel: " in line]
            if lines:
                self.kernel_lines.append(lines[-1].split("kernel: ", 1)[1])
        elif state in TABLES:
            try:
                self.taken[state] += nft_counted(self.lab, TABLES[state])
            finally:
                nft(self.lab, delete=TABLES[state])
                if state == "v2ray":
                    v2ray_policy_route(self.lab, add=False)

    def close(self) -> None:
        """Back to "none": dae-runtime stopped, no bench table or policy rule left."""
        try:
            self._leave()
        finally:
            self.gw.stop()
