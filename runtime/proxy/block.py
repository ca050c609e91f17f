"""The `block` outbound (id 1): refuse at once."""
from __future__ import annotations

from .base import Blocked, Destination, Dialed, ReplyCallback, UdpAssociation


class BlockOutbound:
    name = "block"

    async def dial_tcp(self, dst: Destination) -> Dialed:
        raise Blocked(f"{dst} is blocked by the routing rules")

    async def open_udp(self, family: int, on_reply: ReplyCallback) -> UdpAssociation:
        raise Blocked("UDP flow is blocked by the routing rules")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
