"""Property: whatever bytes reach the DNS listener, it stays up and keeps answering real queries."""
from __future__ import annotations

import asyncio
import socket
import struct

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from dae_py.runtime.dns import DnsModule

from .fakes import FakeUpstream, RecordingBindings
from .harness import ZONE, addresses, config, with_module

query = dns.message.make_query("a.proxied.test", "A").to_wire()
# Inputs near real queries find more parser paths than random bytes alone.
mutated = st.builds(lambda cut, flip, extra: bytes(b ^ flip if i == cut % max(len(query), 1) else b
                                                    for i, b in enumerate(query))[: cut + 12] + extra,
                    st.integers(0, len(query)), st.integers(0, 255), st.binary(max_size=64))
headers = st.builds(lambda qd, an, body: struct.pack("!HHHHHH", 0x1234, 0x0100, qd, an, 0, 0) + body,
                    st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=200))
inputs = st.lists(st.one_of(st.binary(max_size=600), mutated, headers), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(inputs)
def test_garbage_never_stops_the_listener(batch: list[bytes]) -> None:
    async def main() -> None:
        up = await FakeUpstream(ZONE).start()
        try:
            async def body(mod: DnsModule, _b: RecordingBindings) -> None:
                host, port = mod.listener.addresses[0]
                loop = asyncio.get_running_loop()
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setblocking(False)
                s.connect((host, port))
                try:
                    for data in [*batch, b"\x00" * 65000]:  # and one huge datagram
                        s.send(data)
                    q = dns.message.make_query("a.proxied.test", "A")
                    s.send(q.to_wire())
                    while True:  # FORMERRs of the garbage may come first
                        r = dns.message.from_wire(await asyncio.wait_for(loop.sock_recv(s, 65535), 3))
                        if r.id == q.id and r.answer:
                            break
                    assert addresses(r) == ["10.232.1.1"]
                    # and over TCP: a bad length, then a good query on a new connection
                    rd, wr = await asyncio.open_connection(host, port)
                    wr.write(struct.pack("!H", 3) + b"abc")
                    await wr.drain()
                    assert await asyncio.wait_for(rd.read(), 3) == b""
                    wr.close()
                    rd, wr = await asyncio.open_connection(host, port)
                    w = q.to_wire()
                    wr.write(struct.pack("!H", len(w)) + w)
                    (n,) = struct.unpack("!H", await asyncio.wait_for(rd.readexactly(2), 3))
                    assert addresses(dns.message.from_wire(await rd.readexactly(n))) == ["10.232.1.1"]
                    wr.close()
                finally:
                    s.close()
            await with_module(config({"main": ("udp", up.port)}), body)
        finally:
            await up.close()
    asyncio.run(main())
