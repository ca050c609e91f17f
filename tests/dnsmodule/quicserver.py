"""A DoQ (RFC 9250) and DoH3 test server on aioquic: Debian packages no DoQ server (unbound 1.17,
dnsdist 1.7 and knot-resolver 5.6 in bookworm serve DoT and DoH only), so the tests bring
their own. It answers from a name -> IPv4 map, and `whoami.test` with the address the query
came from, as does any name starting with `whoami.` (so a test can tell a proxied upstream query
from a direct one). With a plain port it also serves UDP and TCP (RFC 7766 framing).

In-process: `await QuicDnsServer(zone, cert, key).start(host, doq_port, h3_port)`.
As a lab peer: `python -m tests.dnsmodule.quicserver --host H --doq P --h3 P --cert C --key K
--zone name=ip ...` (prints "ready" once both listen).
"""
from __future__ import annotations

import argparse
import asyncio
import struct
import sys
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ProtocolNegotiated, QuicEvent, StreamDataReceived


def answer(zone: dict[str, str], wire: bytes, peer: str) -> bytes:
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    name = q.question[0].name.to_text().lower().rstrip(".")
    ip = peer if name.startswith("whoami.") else zone.get(name)
    if ip is None:
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif q.question[0].rdtype == 1:
        r.answer.append(dns.rrset.from_text(name + ".", 30, "IN", "A", ip))
    return r.to_wire()


class _Proto(QuicConnectionProtocol):
    zone: dict[str, str] = {}
    counts: dict[str, int] = {}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.h3: H3Connection | None = None
        self.bufs: dict[int, bytearray] = {}

    def _peer(self) -> str:
        addr = self._quic._network_paths[0].addr  # the client's address as this connection sees it
        return str(addr[0]).removeprefix("::ffff:")

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, ProtocolNegotiated) and event.alpn_protocol in H3_ALPN:
            self.h3 = H3Connection(self._quic)
        if self.h3 is not None:
            for h in self.h3.handle_event(event):
                if isinstance(h, HeadersReceived | DataReceived):
                    buf = self.bufs.setdefault(h.stream_id, bytearray())
                    if isinstance(h, DataReceived):
                        buf.extend(h.data)
                    if h.stream_ended:
                        self.counts["h3"] = self.counts.get("h3", 0) + 1
                        out = answer(self.zone, bytes(buf), self._peer())
                        self.h3.send_headers(h.stream_id, [(b":status", b"200"),
                                                           (b"content-type", b"application/dns-message"),
                                                           (b"content-length", str(len(out)).encode())])
                        self.h3.send_data(h.stream_id, out, end_stream=True)
                        self.transmit()
            return
        if isinstance(event, StreamDataReceived):
            buf = self.bufs.setdefault(event.stream_id, bytearray())
            buf.extend(event.data)
            if len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                self.counts["doq"] = self.counts.get("doq", 0) + 1
                out = answer(self.zone, bytes(buf[2:]), self._peer())
                self._quic.send_stream_data(event.stream_id, struct.pack("!H", len(out)) + out, end_stream=True)
                self.transmit()


class QuicDnsServer:
    def __init__(self, zone: dict[str, str], cert: str, key: str) -> None:
        self.zone = zone
        self.cert, self.key = cert, key
        self.servers: list[Any] = []
        self.counts: dict[str, int] = {}

    async def start_plain(self, host: str, port: int) -> QuicDnsServer:
        zone, counts = self.zone, self.counts

        class Udp(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                counts["udp"] = counts.get("udp", 0) + 1
                self.transport.sendto(answer(zone, data, addr[0]), addr)

        async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername")[0]
            try:
                while True:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                    counts["tcp"] = counts.get("tcp", 0) + 1
                    out = answer(zone, await reader.readexactly(n), peer)
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=(host, port))
        self.servers.append(transport)
        self.servers.append(await asyncio.start_server(tcp, host, port))
        return self

    async def start(self, host: str, doq_port: int, h3_port: int) -> QuicDnsServer:
        zone, counts = self.zone, self.counts

        class Proto(_Proto):
            pass

        Proto.zone, Proto.counts = zone, counts
        for port, alpn in ((doq_port, ["doq"]), (h3_port, H3_ALPN)):
            cfg = QuicConfiguration(is_client=False, alpn_protocols=alpn)
            cfg.load_cert_chain(self.cert, self.key)
            self.servers.append(await serve(host, port, configuration=cfg, create_protocol=Proto))
        return self

    def close(self) -> None:
        for s in self.servers:
            s.close()


async def _main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--doq", type=int, default=0)
    ap.add_argument("--h3", type=int, default=0)
    ap.add_argument("--cert", default="")
    ap.add_argument("--key", default="")
    ap.add_argument("--plain", type=int, default=0, help="also serve UDP and TCP on this port")
    ap.add_argument("--zone", nargs="*", default=[])
    a = ap.parse_args(argv)
    zone = dict(z.split("=", 1) for z in a.zone)
    srv = QuicDnsServer(zone, a.cert, a.key)
    if a.doq or a.h3:
        await srv.start(a.host, a.doq, a.h3)
    if a.plain:
        await srv.start_plain(a.host, a.plain)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1:]))
