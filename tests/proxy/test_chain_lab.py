"""Chains `a -> b` through the gateway: b dialled through a, against real servers (dante's
SOCKS5 as the first hop; shadowsocks-libev's ss-server and trojan-gfw as the second). The
target must see the last hop's address; a wrong password on the last hop fails the node's
checks and the group moves on."""
from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from dae_py.runtime.groups import Check
from dae_py.runtime.proxy import DialError, Node, chain
from tests.conftest import have_root_bpf
from tests.proxy.test_proxy_lab import echo_through
from tests.relay.conftest import CHECK, gateway_env, group_of, node
from tests.relay.lab import SERVER4, Lab

pytestmark = pytest.mark.root

DANTE = "10.77.2.41"
SS_IP = "10.77.2.42"
SS_PORT, SS_PW, SS_CIPHER = 8393, "chain-pw", "aes-256-gcm"
TROJAN_PORT, TROJAN_PW = 4444, "chain-trojan"


def chained(name: str, last: dict[str, Any]) -> dict[str, Any]:
    first = {**node(name, "socks5", DANTE, 1080)}
    return {**last, "name": name, "chain": [first]}


SS_HOP = {**node("x", "ss", SS_IP, SS_PORT, None, SS_PW), "cipher": SS_CIPHER}
TROJAN_HOP = {**node("x", "trojan", SS_IP, TROJAN_PORT, None, TROJAN_PW), "allow_insecure": True,
              "sni": "chain.lab.test", "alpn": ["http/1.1"]}
NODES = [chained("socks_ss", SS_HOP), chained("socks_trojan", TROJAN_HOP),
         chained("socks_ss_badpw", {**SS_HOP, "password": "wrong"}),
         {**SS_HOP, "name": "ss_direct"}]
NAMES = [n["name"] for n in NODES]


def manifest(extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"nodes": NODES, "groups": [{"name": f"g_{n}", "id": 100 + i, "policy": "fixed", "fixed_index": 0,
                                        "nodes": [n], "check": CHECK} for i, n in enumerate(NAMES)] + (extra or [])}


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("chain-ca")
    cert = trustme.CA().issue_cert("chain.lab.test")
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    os.chmod(folder, 0o755)
    lab = Lab().up_()
    try:
        lab.danted(DANTE)
        lab.ss_server([SS_IP], SS_PORT, SS_CIPHER, SS_PW, bind=SS_IP)
        lab.trojan_server(TROJAN_PORT, TROJAN_PW, folder / "cert.pem", folder / "key.pem")
        yield lab
    finally:
        lab.down()


@pytest.mark.parametrize("name", ["socks_ss", "socks_trojan"])
def test_a_chain_dials_the_last_hop_through_the_first(clab: Lab, name: str) -> None:
    async def scenario() -> None:
        async with gateway_env(clab, manifest()) as env:
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 100 + NAMES.index(name), 1 << 20)
            assert sent == echoed
            if name == "socks_ss":
                assert who == SS_IP  # ss-server leaves from its -b address: the last hop's

    clab.run(scenario)


def test_a_chain_is_tcp_only_and_a_later_hop_must_ride_a_stream() -> None:
    n = Node.from_manifest(NODES[0])
    assert n.chain and not n.supports_udp
    bad = Node.from_manifest({**NODES[0], "protocol": "vmess", "username": "0" * 32, "cipher": "none"})
    with pytest.raises(DialError, match="a vmess hop cannot follow another"):
        chain.check(bad)


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
