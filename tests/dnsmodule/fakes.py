"""In-process peers for the DNS module's tests: a zone-serving upstream on loopback (UDP and
TCP, optionally truncating over UDP or answering late) and a DomainBindings stand-in that
records what was bound, in order."""
from __future__ import annotations

import asyncio
import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


@dataclass
class Zone:
    """name -> list of (type, ttl, value) records; CNAMEs are followed like a resolver does."""

    records: dict[str, list[tuple[str, int, str]]] = field(default_factory=dict)

    def answer(self, q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q, recursion_available=True)
        question = q.question[0]
        name = question.name.to_text().lower()
        want = dns.rdatatype.to_text(question.rdtype)
        for _ in range(8):
            recs = self.records.get(name)
            if recs is None:
                if not r.answer:
                    r.set_rcode(dns.rcode.NXDOMAIN)
                return r
            cname = [x for x in recs if x[0] == "CNAME"]
            if cname and want != "CNAME":
                r.answer.append(dns.rrset.from_text(name, cname[0][1], "IN", "CNAME", cname[0][2]))
                name = cname[0][2].lower()
                continue
            for typ, ttl, value in recs:
                if typ == want:
                    r.answer.append(dns.rrset.from_text(name, ttl, "IN", typ, value))
            return r
        return r


class FakeUpstream:
    def __init__(self, zone: Zone, *, truncate_udp: bool = False, delay: float = 0.0) -> None:
        self.zone = zone
        self.truncate_udp = truncate_udp
        self.delay = delay
        self.udp_queries = 0
        self.tcp_queries = 0
        self.port = 0
        self._transport: Any = None
        self._server: Any = None

    async def start(self, host: str = "127.0.0.1") -> FakeUpstream:
        loop = asyncio.get_running_loop()
        up = self

        class Proto(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                up.udp_queries += 1
                loop.create_task(up._udp_reply(self.transport, data, addr))

        for _attempt in range(20):  # a free UDP port may be taken for TCP
            self._transport, _ = await loop.create_datagram_endpoint(Proto, local_addr=(host, 0))
            self.port = self._transport.get_extra_info("sockname")[1]
            try:
                self._server = await asyncio.start_server(self._tcp, host, self.port)
                return self
            except OSError:
                self._transport.close()
        raise OSError("no port free for both UDP and TCP")

    async def _udp_reply(self, transport: Any, data: bytes, addr: Any) -> None:
        await asyncio.sleep(self.delay)
        q = dns.message.from_wire(data)
        r = self.zone.answer(q)
        if self.truncate_udp:
            r.answer = []
            r.flags |= dns.flags.TC
        transport.sendto(r.to_wire(), addr)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack("!H", await reader.readexactly(2))
                q = dns.message.from_wire(await reader.readexactly(n))
                self.tcp_queries += 1
                await asyncio.sleep(self.delay)
                wire = self.zone.answer(q).to_wire()
                writer.write(struct.pack("!H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self._transport.close()
        self._server.close()


class RecordingBindings:
    """What DomainBindings.bind/unbind were asked, as an ordered event list."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, int]] = []
        self.entries: dict[Any, int] = {}

    def bind(self, dst: Any, bits: int) -> None:
        self.events.append(("bind", dst, bits))
        self.entries[dst] = bits

    def unbind(self, dst: Any) -> bool:
        self.events.append(("unbind", dst, 0))
        return self.entries.pop(dst, None) is not None

    def lookup(self, dst: Any) -> int | None:
        return self.entries.get(ipaddress.ip_address(dst) if isinstance(dst, str) else dst)
