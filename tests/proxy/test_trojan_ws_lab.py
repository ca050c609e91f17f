"""Trojan over WebSocket + TLS (a `trojan://...?type=ws&path=` link) through the gateway against
v2ray 4.34's trojan inbound on the same transport, with a trustme CA: TCP and UDP reach the
target from v2ray's sendThrough address; the shared transport (runtime/proxy/transport.py)
carries it, the same code the VMess/VLESS WebSocket nodes use."""
from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import trustme

from tests.conftest import have_root_bpf
from tests.proxy.test_proxy_lab import echo_through, udp_through
from tests.relay.conftest import CHECK, gateway_env, node
from tests.relay.lab import SERVER4, Lab
from tests.trust import trusting

pytestmark = pytest.mark.root

IP, PORT, PW, SNI = "10.77.2.43", 4445, "tj-ws-pw", "tjws.lab.test"
NODE: dict[str, Any] = {**node("tjws", "trojan", IP, PORT, None, PW), "sni": SNI, "alpn": ["http/1.1"],
                        "transport": {"network": "ws", "tls": True, "path": "/tj", "host": SNI}}


@pytest.fixture(scope="module")
def wlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("tjws-ca")
    ca = trustme.CA()
    cert = ca.issue_cert(SNI)
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    os.chmod(folder, 0o755)
    lab = Lab().up_()
    with trusting(folder / "ca.pem"):
        try:
            conf = lab.dir / "v2ray-trojan-ws.json"
            conf.write_text(json.dumps({
                "log": {"loglevel": "warning"},
                "inbounds": [{"listen": IP, "port": PORT, "protocol": "trojan",
                              "settings": {"clients": [{"password": PW}]},
                              "streamSettings": {"network": "ws", "security": "tls", "wsSettings": {"path": "/tj"},
                                                 "tlsSettings": {"certificates": [{
                                                     "certificateFile": str(folder / "cert.pem"),
                                                     "keyFile": str(folder / "key.pem")}]}}}],
                "outbounds": [{"protocol": "freedom", "sendThrough": IP}],
            }))
            peer = lab.start_peer("v2ray-trojan-ws", lab.up, ["v2ray", "-config", str(conf)])
            lab.wait_listening(lab.up, IP, PORT, peer)
            yield lab
        finally:
            lab.down()


def test_trojan_over_websocket_tls_carries_tcp_and_udp(wlab: Lab) -> None:
    manifest = {"nodes": [NODE], "groups": [{"name": "g", "id": 100, "policy": "fixed", "fixed_index": 0,
                                              "nodes": ["tjws"], "check": CHECK}]}

    async def scenario() -> None:
        async with gateway_env(wlab, manifest) as env:
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 100, 1 << 20)
            assert sent == echoed and who == IP
            who, _ = await udp_through(env, socket.AF_INET, SERVER4, 100)
            assert who == IP

    wlab.run(scenario)
