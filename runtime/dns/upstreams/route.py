"""How an upstream's traffic is routed: through the gateway's own routing decision for the
upstream's address, as dae does (so `dip(8.8.8.8) -> proxy` sends queries to 8.8.8.8 through
the proxy group, and the fallback decides the rest).

The flow asked about has no source (0.0.0.0:0 / [::]:0): rules on the source, MAC, DSCP or
process never match it; `dip`, `dport` and `l4proto` do.
"""
from __future__ import annotations

import logging
from typing import Any

from dae_py.runtime.proxy.base import Outbound
from dae_py.runtime.relay.flow import Flow

from .base import Route

log = logging.getLogger("dae.dns.upstream")


def routed(router: Any, outbounds: Any) -> Route:
    """A Route over a relay Router (`route(flow) -> Route`) and its outbound table (`get(id)`)."""

    def route(l4proto: str, ip: str, port: int) -> Outbound:
        src = ("::", 0) if ":" in ip else ("0.0.0.0", 0)
        decision = router.route(Flow(l4proto, src, (ip, port)))
        outbound: Outbound | None = outbounds.get(decision.outbound)
        if outbound is None:
            raise ValueError(f"routing sent {l4proto} to {ip}:{port} to outbound {decision.outbound}, "
                             "which the runtime does not have")
        log.debug("dns upstream %s %s:%d routed to %s%s", l4proto, ip, port, outbound.name, decision.why)
        return outbound

    return route
