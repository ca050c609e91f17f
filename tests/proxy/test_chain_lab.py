"""Chains `a -> b` through the gateway: b dialled through a, against real servers (dante's
SOCKS5 as the first hop; shadowsocks-libev's ss-server, trojan-gfw and v2ray 4.34's VLESS and
VMess inbounds as the second). The target must see the last hop's address; a wrong password on
the last hop fails the node's checks and the group moves on.

UDP: a chain whose last hop carries datagrams inside its stream (trojan, vless, vmess) carries
UDP, its stream to the last hop dialled through dante; the last hop's server logs the session
as coming from dante's address, which proves the path. A chain ending in ss carries no UDP:
groups leave it out of UDP selection and say why."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from dae_py.runtime.groups import Check
from dae_py.runtime.proxy import DialError, Node, chain
from tests.conftest import have_root_bpf
from tests.proxy.test_proxy_lab import echo_through, udp_through
from tests.relay import servers
from tests.relay.conftest import CHECK, gateway_env, group_of, node
from tests.relay.lab import SERVER4, SERVER6, Lab

pytestmark = pytest.mark.root

DANTE, DANTE6 = "10.77.2.41", "fd77:2::41"
SS_IP = "10.77.2.42"
SS_PORT, SS_PW, SS_CIPHER = 8393, "chain-pw", "aes-256-gcm"
TROJAN_PORT, TROJAN_PW = 4444, "chain-trojan"
TROJAN6 = "fd77:2::42"  # trojan listens on every address of the upstream namespace
V2RAY = "10.77.2.43"
VLESS_PORT, VMESS_PORT = 10443, 10080
UUID = "3b0e8c4d-2f6a-4e1b-9c7d-5a4b3c2d1e0f"
SNI = "chain.lab.test"


def chained(name: str, last: dict[str, Any], first_host: str = DANTE) -> dict[str, Any]:
    first = {**node(name, "socks5", first_host, 1080)}
    return {**last, "name": name, "chain": [first]}


SS_HOP = {**node("x", "ss", SS_IP, SS_PORT, None, SS_PW), "cipher": SS_CIPHER}
TROJAN_HOP = {**node("x", "trojan", SS_IP, TROJAN_PORT, None, TROJAN_PW), "allow_insecure": True,
              "sni": SNI, "alpn": ["http/1.1"]}
VLESS_HOP = {**node("x", "vless", V2RAY, VLESS_PORT), "username": UUID, "allow_insecure": True, "sni": SNI,
             "transport": {"network": "tcp", "tls": True}}
VMESS_HOP = {**node("x", "vmess", V2RAY, VMESS_PORT), "username": UUID, "cipher": "aes-128-gcm",
             "transport": {"network": "ws", "tls": False, "path": "/chain", "host": SNI}}
NODES = [chained("socks_ss", SS_HOP), chained("socks_trojan", TROJAN_HOP),
         chained("socks_ss_badpw", {**SS_HOP, "password": "wrong"}),
         {**SS_HOP, "name": "ss_direct"},
         chained("socks_vless", VLESS_HOP), chained("socks_vmess_ws", VMESS_HOP),
         chained("socks6_trojan", {**TROJAN_HOP, "host": TROJAN6}, DANTE6),
         chained("socks_trojan_badpw", {**TROJAN_HOP, "password": "not-the-password"})]
NAMES = [n["name"] for n in NODES]


def gid(name: str) -> int:
    return 100 + NAMES.index(name)


def manifest(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"nodes": NODES, "groups": [{"name": f"g_{n}", "id": 100 + i, "policy": "fixed", "fixed_index": 0,
                                        "nodes": [n], "check": CHECK} for i, n in enumerate(NAMES)] + (extra or [])}


def access_log(lab: Lab) -> Path:
    return lab.dir / "v2ray-chain-access.log"


def v2ray_server(lab: Lab, cert: Path, key: Path) -> None:
    """VLESS over TLS and VMess over WebSocket on V2RAY, out from V2RAY, its access log at
    `access_log(lab)`."""
    access = access_log(lab)
    tls = {"security": "tls", "tlsSettings": {"certificates": [{"certificateFile": str(cert),
                                                                 "keyFile": str(key)}]}}
    conf = lab.dir / "v2ray-chain.json"
    conf.write_text(json.dumps({
        "log": {"loglevel": "info", "access": str(access)},
        "inbounds": [
            {"listen": V2RAY, "port": VLESS_PORT, "protocol": "vless",
             "settings": {"clients": [{"id": UUID}], "decryption": "none"},
             "streamSettings": {"network": "tcp", **tls}},
            {"listen": V2RAY, "port": VMESS_PORT, "protocol": "vmess",
             "settings": {"clients": [{"id": UUID, "alterId": 0}]},
             "streamSettings": {"network": "ws", "wsSettings": {"path": "/chain"}}}],
        "outbounds": [{"protocol": "freedom", "sendThrough": V2RAY}],
    }))
    peer = lab.start_peer("v2ray-chain", lab.up, ["v2ray", "-config", str(conf)])
    for port in (VLESS_PORT, VMESS_PORT):
        lab.wait_listening(lab.up, V2RAY, port, peer)


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("chain-ca")
    cert = trustme.CA().issue_cert(SNI)
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    os.chmod(folder, 0o755)
    lab = Lab(prefix="h11cu").up_()
    try:
        lab.danted(DANTE, DANTE6)
        lab.ss_server([SS_IP], SS_PORT, SS_CIPHER, SS_PW, bind=SS_IP)
        lab.trojan_server(TROJAN_PORT, TROJAN_PW, folder / "cert.pem", folder / "key.pem")
        v2ray_server(lab, folder / "cert.pem", folder / "key.pem")
        yield lab
    finally:
        lab.down()


def log_lines(path: Path, *needles: str, timeout: float = 3.0) -> list[str]:
    """The lines of a peer's log holding every needle, waiting up to `timeout` for one."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text(errors="replace") if path.exists() else ""
        lines = [line for line in text.splitlines() if all(n in line for n in needles)]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


@pytest.mark.parametrize("name", ["socks_ss", "socks_trojan", "socks_vless", "socks_vmess_ws"])
def test_a_chain_dials_the_last_hop_through_the_first(clab: Lab, name: str) -> None:
    async def scenario() -> None:
        async with gateway_env(clab, manifest()) as env:
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, gid(name), 1 << 20)
            assert sent == echoed
            if name == "socks_ss":
                assert who == SS_IP  # ss-server leaves from its -b address: the last hop's
            if name.startswith(("socks_vless", "socks_vmess")):
                assert who == V2RAY  # v2ray's freedom outbound leaves from its sendThrough

    clab.run(scenario)


def test_only_a_chain_ending_in_a_stream_udp_protocol_carries_udp() -> None:
    by_name = {n["name"]: Node.from_manifest(n) for n in NODES}
    assert by_name["socks_trojan"].supports_udp and by_name["socks_vless"].supports_udp
    assert by_name["socks_vmess_ws"].supports_udp
    ss = by_name["socks_ss"]
    assert ss.chain and not ss.supports_udp
    assert ss.udp_missing is not None and "ends in ss" in ss.udp_missing
    bad = Node.from_manifest({**NODES[1], "protocol": "https"})  # no https hop rides a stream
    with pytest.raises(DialError, match="a https hop cannot follow another"):
        chain.check(bad)
    assert not bad.supports_udp


async def udp_path(env: Any, family: int, server: str, name: str) -> str:
    who, _ = await udp_through(env, family, server, gid(name))
    who2, _ = await udp_through(env, family, server, gid(name))  # a second association
    assert who2 == who
    return who


@pytest.mark.parametrize("name,family", [("socks_trojan", socket.AF_INET), ("socks6_trojan", socket.AF_INET6),
                                         ("socks_vless", socket.AF_INET), ("socks_vmess_ws", socket.AF_INET)])
def test_udp_through_a_chain_reaches_the_target_from_the_last_hop(clab: Lab, name: str, family: int) -> None:
    """The datagrams reach the echo server from the last hop's server (v2ray: its sendThrough
    address), and that server logs the session as coming from dante's address: the stream to
    the last hop went through the first."""
    server = SERVER6 if family == socket.AF_INET6 else SERVER4

    async def scenario() -> str:
        async with gateway_env(clab, manifest()) as env:
            who = await udp_path(env, family, server, name)
            assert env.gateway.stats[f"g_{name}"].flows >= 1
            return who

    who = clab.run(scenario)
    if "trojan" in name:
        dante = DANTE6 if family == socket.AF_INET6 else DANTE
        lines = log_lines(clab.dir / f"trojan-{TROJAN_PORT}.log", dante, "UDP associate")
        assert lines, (clab.dir / f"trojan-{TROJAN_PORT}.log").read_text()[-2000:]
        assert who not in (DANTE, DANTE6)
    else:
        assert who == V2RAY
        access = access_log(clab)
        lines = log_lines(access, f"{DANTE}:", f"udp:{SERVER4}:7001")
        assert lines, access.read_text()[-2000:] if access.exists() else "no access log"


def test_a_chain_ending_in_ss_gets_no_udp_and_the_group_says_why(clab: Lab,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Group 2 holds the ss chain first, then a trojan chain: UDP skips the ss chain (TCP still
    takes it). Group 3 holds only the ss chain: its UDP flows are refused, with the reason in
    the log line (the status summary's wording: tests/proxy/test_chain_udp.py)."""
    mixed = {"name": "mixed", "id": 2, "policy": "fixed", "fixed_index": 0,
             "nodes": ["socks_ss", "socks_trojan"], "check": CHECK}
    only = {"name": "only_ss", "id": 3, "policy": "fixed", "fixed_index": 0, "nodes": ["socks_ss"], "check": CHECK}

    async def scenario() -> None:
        async with gateway_env(clab, manifest([mixed, only])) as env:
            g2 = group_of(env.gateway.table, 2)
            assert [n.name for n in g2.candidates(Check.UDP)] == ["socks_trojan"]
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == SS_IP  # TCP: the ss chain, first in the group
            await udp_through(env, socket.AF_INET, SERVER4, 2)  # UDP: the trojan chain
            sock = env.client(socket.AF_INET, socket.SOCK_DGRAM, outbound_id=3)
            try:
                with pytest.raises(TimeoutError):
                    await servers.udp_exchange(sock, (SERVER4, 7001), b"x" * 100, timeout=1.0)
            finally:
                sock.close()
            g3 = group_of(env.gateway.table, 3)
            assert g3.candidates(Check.UDP) == [] and g3.alive(Check.TCP)

    with caplog.at_level(logging.INFO):
        clab.run(scenario)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "via mixed node socks_trojan" in text, text
    refused = [r.getMessage() for r in caplog.records if "via only_ss refused" in r.getMessage()]
    assert refused and "no node carries udp" in refused[0] and "this one ends in ss" in refused[0], refused


def test_a_wrong_trojan_password_on_the_last_hop_is_refused_promptly(clab: Lab,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """trojan-gfw hands a request with a wrong password to its fallback (nothing listens
    there), so it closes the session at once: the UDP check fails at once, not at its timeout;
    one line names the node and what a wrong password looks like; UDP fails over."""
    group = {"name": "fo", "id": 2, "policy": "fixed", "fixed_index": 0,
             "nodes": ["socks_trojan_badpw", "socks_trojan"], "check": {**CHECK, "check_interval_s": 60.0}}

    async def scenario() -> float:
        async with gateway_env(clab, manifest([group]), health_checks=True) as env:
            g = group_of(env.gateway.table, 2)
            start = time.monotonic()
            while g.checker.rounds == 0:
                await asyncio.sleep(0.01)
            took = time.monotonic() - start
            stats = g.stats[Check.UDP]["socks_trojan_badpw"]
            assert not stats.alive and "ended the UDP association" in (stats.last_error or ""), stats.last_error
            assert g.stats[Check.UDP]["socks_trojan"].alive
            await udp_through(env, socket.AF_INET, SERVER4, 2)  # through socks_trojan
            return took

    with caplog.at_level(logging.INFO):
        took = clab.run(scenario)
    assert took < 5, took
    lines = [r.getMessage() for r in caplog.records if "'socks_trojan_badpw'" in r.getMessage()
             and "wrong password" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records][-20:]
    assert all("not-the-password" not in r.getMessage() and TROJAN_PW not in r.getMessage()
               for r in caplog.records)


def test_a_wrong_password_on_the_last_hop_fails_over_to_the_next_node(clab: Lab) -> None:
    group = {"name": "fo", "id": 2, "policy": "fixed", "fixed_index": 0,
             "nodes": ["socks_ss_badpw", "ss_direct"], "check": {**CHECK, "check_interval_s": 60.0}}

    async def scenario() -> None:
        async with gateway_env(clab, manifest([group]), health_checks=True) as env:
            g = group_of(env.gateway.table, 2)
            while g.checker.rounds == 0:
                await asyncio.sleep(0.01)
            assert not g.stats[Check.TCP]["socks_ss_badpw"].alive
            # the bad node gives no byte back: the echo only works because the flow went on to ss_direct
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == SS_IP

    clab.run(scenario)
