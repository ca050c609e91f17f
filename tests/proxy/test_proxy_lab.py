"""Shadowsocks AEAD and Trojan through the gateway against real servers from Debian:
shadowsocks-libev's ss-server (one per cipher), v2ray 4.34's shadowsocks inbound (a second,
independent implementation of the server side) and trojan-gfw (a test CA made by trustme).

Client namespace -> nftables tproxy -> relay -> node in the upstream namespace -> target server
in the upstream namespace; payloads checksummed both ways; UDP replies say where they came from."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trustme

from dae_py.runtime.groups import Check
from dae_py.runtime.net.sockets import connect_tcp
from dae_py.runtime.net.stream import SocketStream
from dae_py.runtime.proxy import Destination, DialOptions, Node, shadowsocks
from dae_py.runtime.relay import RelayConfig
from tests.conftest import have_root_bpf
from tests.proxy.chunk_edges import Cutting, echo_edges
from tests.relay import servers
from tests.relay.conftest import CHECK, Env, gateway_env, group_of, node
from tests.relay.lab import GW_UP4, GW_UP6, RELAY_MARK, SERVER4, SERVER6, Lab
from tests.trust import trusting

pytestmark = pytest.mark.root

SS_PORT = 8388
SS_PASSWORD = "ss-p@ss word"
SS_IPS = {"aes-128-gcm": ("10.77.2.30", "fd77:2::30"),
          "aes-256-gcm": ("10.77.2.31", "fd77:2::31"),
          "chacha20-ietf-poly1305": ("10.77.2.32", "fd77:2::32")}
V2RAY_SS = "10.77.2.33"  # v2ray's shadowsocks inbound: a second, independent server
TROJAN4, TROJAN6 = "10.77.2.40", "fd77:2::40"
TROJAN_PORT = 4443
TROJAN_PASSWORD = "trojan-s3cret"
TROJAN_SNI = "trojan.lab.test"


def ss_node(name: str, cipher: str, host: str, password: str = SS_PASSWORD) -> dict[str, Any]:
    return {**node(name, "ss", host, SS_PORT, None, password), "cipher": cipher,
            "link": f"ss://{cipher}:{password}@{host}:{SS_PORT}"}


def trojan_node(name: str, host: str, password: str = TROJAN_PASSWORD, sni: str | None = TROJAN_SNI,
                allow_insecure: bool = False) -> dict[str, Any]:
    return {**node(name, "trojan", host, TROJAN_PORT, None, password), "sni": sni,
            "allow_insecure": allow_insecure, "alpn": ["http/1.1"],
            "link": f"trojan://{password}@{host}:{TROJAN_PORT}"}


NODES = [ss_node(f"ss_{c}", c, ips[0]) for c, ips in SS_IPS.items()]
NODES += [ss_node(f"ss6_{c}", c, ips[1]) for c, ips in SS_IPS.items()]
NODES += [{**ss_node(f"v2ray_{c}", c, V2RAY_SS), "port": port}
          for port, c in enumerate(SS_IPS, start=SS_PORT)]
NODES += [
    ss_node("ss_badpw", "aes-128-gcm", SS_IPS["aes-128-gcm"][0], "not-the-password"),
    ss_node("ss_badcipher", "aes-256-gcm", SS_IPS["aes-128-gcm"][0]),
    trojan_node("trojan", TROJAN4),
    trojan_node("trojan6", TROJAN6),
    trojan_node("trojan_badpw", TROJAN4, "not-the-password"),
    trojan_node("trojan_badsni", TROJAN4, sni="wrong.lab.test"),
    trojan_node("trojan_insecure", TROJAN4, sni="wrong.lab.test", allow_insecure=True),
]
NAMES = [n["name"] for n in NODES]


def gid(name: str) -> int:
    return 100 + NAMES.index(name)


def manifest(extra_groups: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    groups = [{"name": f"g_{n}", "id": gid(n), "policy": "fixed", "fixed_index": 0,
               "nodes": [n], "check": CHECK} for n in NAMES]
    return {"nodes": NODES, "groups": groups + list(extra_groups)}


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("trojan-ca")
    ca = trustme.CA()
    cert = ca.issue_cert(TROJAN_SNI, TROJAN4, TROJAN6)
    cert_file, key_file, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    os.chmod(folder, 0o755)
    lab = Lab().up_()
    with trusting(ca_file):
        try:
            for cipher, (ip4, ip6) in SS_IPS.items():
                lab.ss_server([ip4, ip6], SS_PORT, cipher, SS_PASSWORD, bind=ip4)
            for port, cipher in enumerate(SS_IPS, start=SS_PORT):
                lab.v2ray_ss_server(V2RAY_SS, port, cipher, SS_PASSWORD)
            lab.trojan_server(TROJAN_PORT, TROJAN_PASSWORD, cert_file, key_file)
            yield lab
        finally:
            lab.down()


async def echo_through(env: Env, family: int, server: str, outbound_id: int,
                       size: int = 1 << 20) -> tuple[str, bytes, bytes]:
    """(who the server saw, sha256 sent, sha256 echoed back) for `size` random bytes."""
    loop = asyncio.get_running_loop()
    sock = env.client(family, outbound_id=outbound_id)
    try:
        await servers.connect(sock, server, 7000)
        seen = (await servers.recv_line(sock)).decode().split()[0]
        payload = os.urandom(size)
        sender = loop.create_task(loop.sock_sendall(sock, payload))
        got = bytearray()
        while len(got) < size:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), 10)
            assert chunk, f"EOF after {len(got)} of {size} bytes"
            got += chunk
        await sender
        return seen, hashlib.sha256(payload).digest(), hashlib.sha256(got).digest()
    finally:
        sock.close()


def checked(nodes: list[str], policy: str = "min") -> dict[str, Any]:
    """Group 2 of `nodes`, health-checked (one round, then none within a test's time)."""
    return {"name": "checked", "id": 2, "policy": policy, "nodes": nodes,
            "check": {**CHECK, "check_interval_s": 60.0}}


async def first_round(env: Env) -> Any:
    """Group 2 once its health checker finished the first round."""
    group = group_of(env.gateway.table, 2)
    while group.checker.rounds == 0:
        await asyncio.sleep(0.01)
    return group


async def udp_through(env: Env, family: int, server: str, outbound_id: int) -> tuple[str, bytes]:
    sock = env.client(family, socket.SOCK_DGRAM, outbound_id=outbound_id)
    try:
        payload = os.urandom(1200)
        reply, src = await servers.udp_exchange(sock, (server, 7001), payload)
        assert src[0] == server and src[1] == 7001
        who, _, data = reply.partition(b"|")
        assert data == payload
        return who.decode().split()[0], data
    finally:
        sock.close()


Case = tuple[int, str, str, str | None]  # family, server, node name, the address the target sees
CASES4: list[Case] = [(socket.AF_INET, SERVER4, f"ss_{c}", ips[0]) for c, ips in SS_IPS.items()]
CASES6: list[Case] = [(socket.AF_INET6, SERVER6, f"ss6_{c}", None) for c in SS_IPS]
V2RAY_CASES: list[Case] = [(socket.AF_INET, SERVER4, f"v2ray_{c}", V2RAY_SS) for c in SS_IPS]
TROJAN_CASES: list[Case] = [(socket.AF_INET, SERVER4, "trojan", None), (socket.AF_INET6, SERVER6, "trojan6", None),
                            (socket.AF_INET, SERVER4, "trojan_insecure", None)]


@pytest.mark.parametrize("family,server,name,seen", CASES4 + CASES6 + V2RAY_CASES + TROJAN_CASES)
def test_tcp_flow_through_the_node_is_intact_both_ways(plab: Lab, family: int, server: str, name: str,
                                                       seen: str | None) -> None:
    async def scenario() -> None:
        async with gateway_env(plab, manifest()) as env:
            who, sent, echoed = await echo_through(env, family, server, gid(name))
            assert sent == echoed
            # ss-server leaves from its -b address; trojan from the upstream namespace's own
            # address for a local target: never from the gateway.
            assert who == (seen or who) and who not in (GW_UP4, GW_UP6)
            assert env.gateway.stats[f"g_{name}"].flows == 1

    plab.run(scenario)


@pytest.mark.parametrize("family,server,name,seen",
                         CASES4 + CASES6 + V2RAY_CASES + TROJAN_CASES[:2])
def test_udp_flow_through_the_node_reaches_the_target(plab: Lab, family: int, server: str, name: str,
                                                      seen: str | None) -> None:
    async def scenario() -> None:
        async with gateway_env(plab, manifest()) as env:
            who, _ = await udp_through(env, family, server, gid(name))
            assert who == (seen or who) and who not in (GW_UP4, GW_UP6)
            who, _ = await udp_through(env, family, server, gid(name))  # the association again

    plab.run(scenario)


def test_ss_wrong_password_is_logged_and_health_checks_fail_over(plab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    group = checked(["ss_badpw", "ss_badcipher", "ss_aes-128-gcm"])

    async def scenario() -> None:
        async with gateway_env(plab, manifest([group]), health_checks=True) as env:
            group2 = await first_round(env)
            for kind in (Check.TCP, Check.UDP):
                assert not group2.stats[kind]["ss_badpw"].alive, kind
                assert not group2.stats[kind]["ss_badcipher"].alive, kind
                assert group2.stats[kind]["ss_aes-128-gcm"].alive, kind
                assert group2.selected(kind).name == "ss_aes-128-gcm"
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == SS_IPS["aes-128-gcm"][0]
            who, _ = await udp_through(env, socket.AF_INET, SERVER4, 2)
            assert who == SS_IPS["aes-128-gcm"][0]

    with caplog.at_level(logging.INFO):
        plab.run(scenario)
    down = [r.getMessage() for r in caplog.records if "'ss_badpw' is down" in r.getMessage()]
    assert down, "no log line says the node is down"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "not-the-password" not in text and SS_PASSWORD not in text


def test_ss_flow_with_a_wrong_key_ends_without_data_and_names_the_node(plab: Lab,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """ss-server answers nothing to a client without the key and holds the connection open
    (its defence against active probing): the flow gets no byte and ends at the idle timeout,
    and one log line names the node and the likely cause."""
    name = "ss_badpw"
    shadowsocks._SILENT.discard(name)  # logged once per node and process: an earlier test may have
    config = RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3,
                         tcp_idle_timeout=2)

    async def scenario() -> None:
        async with gateway_env(plab, manifest(), config) as env:
            sock = env.client(socket.AF_INET, outbound_id=gid(name))
            try:
                await servers.connect(sock, SERVER4, 7000)
                await asyncio.get_running_loop().sock_sendall(sock, b"hello")
                try:
                    data = await servers.recv_all(sock, timeout=30)
                except ConnectionResetError:
                    data = b""
                assert data == b""
            finally:
                sock.close()

    with caplog.at_level(logging.INFO):
        plab.run(scenario)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"node '{name}'" in text and "wrong password or cipher" in text, text
    assert "not-the-password" not in text and SS_PASSWORD not in text


def test_trojan_wrong_password_fails_the_checks(plab: Lab) -> None:
    group = checked(["trojan_badpw", "trojan"])

    async def scenario() -> None:
        async with gateway_env(plab, manifest([group]), health_checks=True) as env:
            group2 = await first_round(env)
            for kind in (Check.TCP, Check.UDP):
                assert not group2.stats[kind]["trojan_badpw"].alive, kind
                assert group2.stats[kind]["trojan"].alive, kind
                assert group2.selected(kind).name == "trojan"

    plab.run(scenario)


def test_trojan_bad_certificate_is_refused_and_the_group_fails_over(plab: Lab,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    group = {"name": "fo", "id": 2, "policy": "fixed", "fixed_index": 0,
             "nodes": ["trojan_badsni", "ss_aes-256-gcm"], "check": CHECK}

    async def scenario() -> None:
        async with gateway_env(plab, manifest([group])) as env:
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == SS_IPS["aes-256-gcm"][0]

    with caplog.at_level(logging.INFO):
        plab.run(scenario)
    lines = [r.getMessage() for r in caplog.records if "trojan_badsni" in r.getMessage()]
    assert any("CERTIFICATE_VERIFY_FAILED" in line or "certificate verify failed" in line
               for line in lines), lines
    assert all(TROJAN_PASSWORD not in r.getMessage() for r in caplog.records)


def test_health_checks_pass_through_both_protocols(plab: Lab) -> None:
    group = checked(["ss_chacha20-ietf-poly1305", "trojan", "trojan6", "ss6_aes-256-gcm"])

    async def scenario() -> None:
        async with gateway_env(plab, manifest([group]), health_checks=True) as env:
            group2 = await first_round(env)
            for kind in (Check.TCP, Check.UDP):
                for name in group["nodes"]:
                    stats = group2.stats[kind][name]
                    assert stats.alive and stats.last is not None, (kind, name, stats.last_error)

    plab.run(scenario)


@pytest.mark.parametrize("name", ["ss_aes-128-gcm", "ss_chacha20-ietf-poly1305", "v2ray_aes-128-gcm"])
@pytest.mark.parametrize("cut", [False, True], ids=["whole-reads", "cut-reads"])
def test_ss_chunk_edges_round_trip_through_the_real_server(plab: Lab, name: str, cut: bool) -> None:
    """Writes of 0x3FFF bytes and one either side, many chunks in one write, and (cut-reads)
    the server's reply fed to the opener in pieces that split lengths, tags and payloads:
    every byte comes back as sent, through ss-server and v2ray's inbound."""
    spec = NODES[NAMES.index(name)]
    target = Node(name, "ss", spec["host"], spec["port"], password=SS_PASSWORD, cipher=spec["cipher"])
    opts = DialOptions(connect_timeout=3, handshake_timeout=3, so_mark=RELAY_MARK)

    async def scenario() -> None:
        async with gateway_env(plab, manifest()):
            raw = SocketStream(await connect_tcp(target.host, target.port, opts, target))
            stream = await shadowsocks.dial_on(Cutting(raw) if cut else raw, target,
                                               Destination(SERVER4, 7000), opts)
            try:
                await echo_edges(stream, shadowsocks.MAX_PAYLOAD)
            finally:
                stream.close()

    plab.run(scenario, timeout=60)
