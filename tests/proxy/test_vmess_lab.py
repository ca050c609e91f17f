"""VMess and VLESS through the gateway against v2ray 4.34 (Debian's) as the server, over TCP,
TLS, WebSocket, WebSocket+TLS and HTTP/2 (TLS), v4 and v6.

One v2ray in the upstream namespace serves every protocol x transport on its own port (config
written here), its freedom outbound leaving from the node's address (v4 or v6, by the target's
family), so a target that sees that address saw the node carry the flow. Client namespace ->
nftables tproxy -> relay -> v2ray -> echo servers; payloads checksummed both ways."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from dae_py.runtime.groups import Check
from dae_py.runtime.net.sockets import connect_tcp
from dae_py.runtime.net.stream import SocketStream
from dae_py.runtime.proxy import Destination, DialOptions, Node, ProxyProtocolError, vless, vmess
from dae_py.runtime.relay import RelayConfig
from tests.conftest import have_root_bpf
from tests.proxy.chunk_edges import Cutting, echo_edges
from tests.proxy.test_proxy_lab import checked, echo_through, first_round, udp_through
from tests.relay import servers
from tests.relay.conftest import CHECK, gateway_env, node
from tests.relay.lab import RELAY_MARK, SERVER4, SERVER6, Lab
from tests.trust import trusting

pytestmark = pytest.mark.root

V2RAY4, V2RAY6 = "10.77.2.45", "fd77:2::45"
SNI = "v2ray.lab.test"
UUID = "6f1d2c4b-8a3e-4f5a-9b7c-2d1e0f9a8b7c"
WRONG_UUID = "6f1d2c4b-8a3e-4f5a-9b7c-2d1e0f9a8b7d"
WS_PATH = "/v2"
# (protocol, transport) -> the v2ray inbound's port
PORTS = {(p, t): port for port, (p, t) in enumerate(
    ((p, t) for p in ("vmess", "vless") for t in ("tcp", "tls", "ws", "ws+tls", "h2+tls")), start=10086)}


def transport(kind: str) -> dict[str, Any]:
    network = kind.split("+")[0] if kind != "tls" else "tcp"
    return {"network": network, "tls": kind.endswith("tls"), "path": WS_PATH,
            "host": SNI if network in ("ws", "h2") else None}


def v2_node(name: str, protocol: str, kind: str, host: str = V2RAY4, security: str | None = None,
            uid: str = UUID) -> dict[str, Any]:
    base = node(name, protocol, host, PORTS[(protocol, kind)])
    return {**base, "username": uid, "cipher": security, "sni": SNI if kind.endswith("tls") else None,
            "transport": transport(kind), "link": f"{protocol}://{host}"}


SECURITIES = ("aes-128-gcm", "chacha20-poly1305", "none", "zero")
NODES = [v2_node(f"vmess_{s}", "vmess", "tcp", security=s) for s in SECURITIES]
NODES += [v2_node(f"vmess_{k}", "vmess", k, security="aes-128-gcm") for k in ("tls", "ws", "ws+tls")]
NODES += [v2_node("vmess_chacha_ws+tls", "vmess", "ws+tls", security="chacha20-poly1305")]
NODES += [v2_node("vmess_h2+tls", "vmess", "h2+tls", security="aes-128-gcm")]
NODES += [v2_node(f"vless_{k}", "vless", k) for k in ("tcp", "tls", "ws", "ws+tls", "h2+tls")]
NODES += [v2_node("vmess6_tcp", "vmess", "tcp", V2RAY6, "aes-128-gcm"),
          v2_node("vless6_ws+tls", "vless", "ws+tls", V2RAY6),
          v2_node("vmess_baduuid", "vmess", "tcp", security="aes-128-gcm", uid=WRONG_UUID),
          v2_node("vless_baduuid", "vless", "tls", uid=WRONG_UUID)]
NAMES = [n["name"] for n in NODES]


def gid(name: str) -> int:
    return 100 + NAMES.index(name)


def manifest(extra_groups: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    groups = [{"name": f"g_{n}", "id": gid(n), "policy": "fixed", "fixed_index": 0,
               "nodes": [n], "check": CHECK} for n in NAMES]
    return {"nodes": NODES, "groups": groups + (extra_groups or [])}


def v2ray_config(cert: str, key: str) -> dict[str, Any]:
    """Every protocol x transport on its port; out through the node's own address."""
    inbounds = []
    for (protocol, kind), port in PORTS.items():
        stream: dict[str, Any] = {"network": {"ws": "ws", "h2": "http"}.get(kind.split("+")[0], "tcp")}
        if kind.startswith("ws"):
            stream["wsSettings"] = {"path": WS_PATH}
        if kind.startswith("h2"):
            stream["httpSettings"] = {"path": WS_PATH, "host": [SNI]}
        if kind.endswith("tls"):
            stream["security"] = "tls"
            stream["tlsSettings"] = {"certificates": [{"certificateFile": cert, "keyFile": key}]}
        client: dict[str, Any] = {"id": UUID}
        settings: dict[str, Any] = {"clients": [client]}
        if protocol == "vmess":
            client["alterId"] = 0
        else:
            settings["decryption"] = "none"
        inbounds.append({"listen": "::", "port": port, "protocol": protocol, "settings": settings,
                         "streamSettings": stream})
    return {
        "log": {"loglevel": "info"},
        "inbounds": inbounds,
        "outbounds": [{"tag": "out4", "protocol": "freedom", "sendThrough": V2RAY4},
                      {"tag": "out6", "protocol": "freedom", "sendThrough": V2RAY6}],
        "routing": {"rules": [{"type": "field", "ip": ["fd77::/16"], "outboundTag": "out6"}]},
    }


def v2ray_server(lab: Lab, cert: str, key: str) -> None:
    conf = lab.dir / "v2ray-vmess-vless.json"
    conf.write_text(json.dumps(v2ray_config(cert, key)))
    peer = lab.start_peer("v2ray-vmess-vless", lab.up, ["v2ray", "-config", str(conf)])
    for port in PORTS.values():
        lab.wait_listening(lab.up, V2RAY4, port, peer)
        lab.wait_listening(lab.up, V2RAY6, port, peer)


@pytest.fixture(scope="module")
def vlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("v2ray-ca")
    ca = trustme.CA()
    cert = ca.issue_cert(SNI, V2RAY4, V2RAY6)
    cert_file, key_file, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    os.chmod(folder, 0o755)
    lab = Lab().up_()
    with trusting(ca_file):
        try:
            v2ray_server(lab, str(cert_file), str(key_file))
            yield lab
        finally:
            lab.down()


GOOD = [n for n in NAMES if "baduuid" not in n]


def family_of(name: str) -> tuple[int, str, str]:
    if "6_" in name:
        return socket.AF_INET6, SERVER6, V2RAY6
    return socket.AF_INET, SERVER4, V2RAY4


@pytest.mark.parametrize("name", GOOD)
def test_tcp_and_udp_flows_through_v2ray_reach_the_target_from_the_node(vlab: Lab, name: str) -> None:
    family, server, seen = family_of(name)

    async def scenario() -> None:
        async with gateway_env(vlab, manifest()) as env:
            who, sent, echoed = await echo_through(env, family, server, gid(name))
            assert sent == echoed and who == seen
            who, _ = await udp_through(env, family, server, gid(name))
            assert who == seen
            who, _ = await udp_through(env, family, server, gid(name))  # a second association
            assert who == seen
            assert env.gateway.stats[f"g_{name}"].flows >= 1

    vlab.run(scenario)


@pytest.mark.parametrize("name,upload,idle", [("vmess_baduuid", 5, 2), ("vless_baduuid", 5, 60),
                                               ("vmess_baduuid", 64 << 10, 60)])
def test_a_wrong_uuid_is_refused_promptly_and_logged_with_the_node(vlab: Lab, name: str, upload: int,
                                                                   idle: float,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    """v2ray answers nothing to an unknown user: VLESS closes at once; VMess reads and drops a
    random 1.7-3.3 KB and holds the connection open (like ss-server), so a small flow gets no
    byte and ends at the idle timeout (2 s here). Either way one warning names the node and
    says a wrong UUID looks like this. A larger upload overflows the drain: v2ray resets at
    once and so does the relay (no idle timeout involved)."""
    vmess._WARNED.discard(name)
    config = RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3,
                         tcp_idle_timeout=idle)

    async def scenario() -> float:
        async with gateway_env(vlab, manifest(), config) as env:
            sock = env.client(socket.AF_INET, outbound_id=gid(name))
            try:
                await servers.connect(sock, SERVER4, 7000)
                start = time.monotonic()
                await asyncio.get_running_loop().sock_sendall(sock, os.urandom(upload))
                try:
                    data = await servers.recv_all(sock, timeout=30)
                except ConnectionResetError:
                    data = b""
                assert data == b""
                return time.monotonic() - start
            finally:
                sock.close()

    with caplog.at_level(logging.INFO):
        took = vlab.run(scenario)
    assert took < min(idle, 5) + 3, took
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"node '{name}'" in text and "wrong UUID" in text, text
    assert UUID not in text and WRONG_UUID not in text


def test_health_checks_fail_a_wrong_uuid_and_the_group_fails_over(vlab: Lab) -> None:
    group = checked(["vmess_baduuid", "vless_baduuid", "vmess_ws+tls", "vless_tls"])

    async def scenario() -> None:
        async with gateway_env(vlab, manifest([group]), health_checks=True) as env:
            group2 = await first_round(env)
            for kind in (Check.TCP, Check.UDP):
                stats = group2.stats[kind]
                assert not stats["vmess_baduuid"].alive and not stats["vless_baduuid"].alive, kind
                assert stats["vmess_ws+tls"].alive, (kind, stats["vmess_ws+tls"].last_error)
                assert stats["vless_tls"].alive, (kind, stats["vless_tls"].last_error)
                assert group2.selected(kind).name in ("vmess_ws+tls", "vless_tls")
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == V2RAY4
            who, _ = await udp_through(env, socket.AF_INET, SERVER4, 2)
            assert who == V2RAY4

    vlab.run(scenario, timeout=90)


@pytest.mark.parametrize("kind,status", [("ws+tls", "answered 404"), ("h2+tls", "answered 404")])
def test_a_wrong_path_is_a_protocol_error_naming_the_status(vlab: Lab, kind: str, status: str) -> None:
    raw = v2_node(f"vless_badpath_{kind}", "vless", kind)
    raw["transport"] = {**raw["transport"], "path": "/not-it"}
    bad = Node.from_manifest(raw)

    async def scenario() -> None:
        stream = await vless.dial(bad, Destination(SERVER4, 7000), DialOptions(so_mark=RELAY_MARK))
        try:
            await asyncio.wait_for(stream.recv(), 10)
        finally:
            stream.close()

    with pytest.raises(ProxyProtocolError, match=status):
        vlab.run(scenario)


@pytest.mark.parametrize("name", ["vmess_aes-128-gcm", "vmess_chacha20-poly1305", "vmess_none"])
@pytest.mark.parametrize("cut", [False, True], ids=["whole-reads", "cut-reads"])
def test_vmess_chunk_edges_round_trip_through_v2ray(vlab: Lab, name: str, cut: bool) -> None:
    """Writes of one 16 KiB chunk and one byte either side, many chunks in one write, and
    (cut-reads) v2ray's reply fed to the chunk opener in pieces that split lengths, tags and
    payloads: every byte comes back as sent."""
    spec = NODES[NAMES.index(name)]
    target = Node(name, "vmess", spec["host"], spec["port"], username=UUID, cipher=spec["cipher"])
    opts = DialOptions(connect_timeout=3, handshake_timeout=3, so_mark=RELAY_MARK)

    async def scenario() -> None:
        async with gateway_env(vlab, manifest()):
            session = vmess.Session(target, vmess.CMD_TCP, Destination(SERVER4, 7000))
            raw = SocketStream(await connect_tcp(target.host, target.port, opts, target))
            stream = vmess.VmessStream(Cutting(raw) if cut else raw, session)
            await raw.sendall(session.header)
            try:
                await echo_edges(stream, vmess.MAX_CHUNK)
            finally:
                stream.close()

    vlab.run(scenario, timeout=60)
