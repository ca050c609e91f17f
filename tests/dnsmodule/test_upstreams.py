"""The upstream transports in-process on loopback: every registered scheme loads, UDP queries
share a small socket pool and take only answers from the upstream, TCP connections are reused,
and DoQ / DoH3 (against tests/dnsmodule/quicserver.py, aioquic) carry concurrent queries on
one QUIC connection. DoT and DoH against unbound are in the lab tests."""
from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from dae_py.runtime.dns.upstreams import SCHEMES, Unsupported, UpstreamError, make, upstream_class
from dae_py.runtime.dns.upstreams.udp import POOL_SIZE, UdpUpstream

from .fakes import FakeUpstream, Zone
from .quicserver import QuicDnsServer

ZONE = Zone({"a.test.": [("A", 60, "10.1.2.3")]})


def spec(scheme: str, port: int, path: str = "") -> dict[str, object]:
    return {"name": scheme, "scheme": scheme, "host": "127.0.0.1", "port": port, "path": path}


def test_every_registered_scheme_loads_its_class_and_an_unknown_one_is_unsupported() -> None:
    for scheme in SCHEMES:
        cls = upstream_class(scheme)
        assert cls.supported and cls.scheme == {"http3": "h3"}.get(scheme, scheme), scheme
    up = make(spec("gopher", 70), 0, 1.0)
    assert isinstance(up, Unsupported)

    async def main() -> None:
        await up.resolve()
        with pytest.raises(UpstreamError, match="not supported"):
            await up.query(dns.message.make_query("a.test", "A"))
    asyncio.run(main())


def test_udp_queries_share_a_small_pool_and_foreign_datagrams_are_dropped() -> None:
    async def main() -> None:
        fake = await FakeUpstream(ZONE, delay=0.05).start()
        up = make(spec("udp", fake.port), 0, 2.0)
        assert isinstance(up, UdpUpstream)
        try:
            await up.resolve()
            rs = await asyncio.gather(*(up.query(dns.message.make_query("a.test", "A")) for _ in range(200)))
            assert all(r.answer[0][0].address == "10.1.2.3" for r in rs)
            assert up.pool.opened == POOL_SIZE
            # an answer-shaped datagram from another port, or for another question, is not taken
            q = dns.message.make_query("a.test", "A")
            task = asyncio.ensure_future(up.pool.exchange(q))
            await asyncio.sleep(0)
            fake_reply = dns.message.make_response(q)
            up.pool._on_reply(fake_reply.to_wire(), ("127.0.0.1", fake.port + 1))
            other = dns.message.make_response(dns.message.make_query("b.test", "A"))
            other.id = q.id
            up.pool._on_reply(other.to_wire(), ("127.0.0.1", fake.port))
            r = await asyncio.wait_for(task, 2)
            assert r.answer and r.answer[0][0].address == "10.1.2.3"  # the real answer, after both
        finally:
            await up.close()
            await fake.close()
    asyncio.run(main())


def test_truncated_udp_answer_is_asked_again_over_tcp_and_tcp_connections_are_reused() -> None:
    async def main() -> None:
        fake = await FakeUpstream(ZONE, truncate_udp=True).start()
        up = make(spec("udp", fake.port), 0, 2.0)
        tcp = make(spec("tcp", fake.port), 0, 2.0)
        try:
            await up.resolve()
            await tcp.resolve()
            r = await up.query(dns.message.make_query("a.test", "A"))
            assert r.answer[0][0].address == "10.1.2.3" and fake.tcp_queries == 1
            for _ in range(10):
                assert (await tcp.query(dns.message.make_query("a.test", "A"))).answer
            assert tcp.dialed == 1  # type: ignore[attr-defined]  # TcpUpstream's counter
        finally:
            await up.close()
            await tcp.close()
            await fake.close()
    asyncio.run(main())


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    import trustme

    d = tmp_path_factory.mktemp("quicca")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    old = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(d / "ca.pem")
    yield d
    if old is None:
        os.environ.pop("SSL_CERT_FILE", None)
    else:
        os.environ["SSL_CERT_FILE"] = old


@pytest.mark.parametrize("scheme", ["quic", "h3"])
def test_doq_and_doh3_answer_concurrent_queries_on_one_connection(scheme: str, test_ca: Path) -> None:
    async def main() -> None:
        srv = await QuicDnsServer({"a.test": "10.1.2.3"}, str(test_ca / "cert.pem"), str(test_ca / "key.pem")
                                  ).start("127.0.0.1", 0, 0)
        doq_port, h3_port = (s._transport.get_extra_info("sockname")[1] for s in srv.servers)
        up = make(spec(scheme, doq_port if scheme == "quic" else h3_port, "/dns-query"), 0, 2.0)
        try:
            await up.resolve()
            r = await up.query(dns.message.make_query("whoami.test", "A"))
            assert r.answer[0][0].address == "127.0.0.1"
            assert (await up.query(dns.message.make_query("nx.test", "A"))).rcode() == dns.rcode.NXDOMAIN
            rs = await asyncio.gather(*(up.query(dns.message.make_query("a.test", "A")) for _ in range(50)))
            assert {r.answer[0][0].address for r in rs} == {"10.1.2.3"}
            assert up.dialed == 1  # type: ignore[attr-defined]  # QuicUpstream's counter
            assert srv.counts[{"quic": "doq", "h3": "h3"}[scheme]] == 52
        finally:
            await up.close()
            srv.close()
    asyncio.run(main())


def test_quic_upstream_without_a_server_fails_within_its_timeout() -> None:
    async def main() -> None:
        up = make(spec("quic", 9), 0, 0.5)  # port 9 (discard): nothing answers on loopback
        await up.resolve()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(UpstreamError):
            await up.query(dns.message.make_query("a.test", "A"))
        assert loop.time() - t0 < 1.0
        await up.close()
    asyncio.run(main())
