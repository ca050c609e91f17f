"""vmess:// (v2rayN base64 JSON) and vless:// links at compile time: what reaches the manifest,
each bad option an error at its file:line:col, transports the runtime lacks a warning from the
capability table, and the UUID never in a message."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from dae_py.compiler.diagnostics import CompileError, Diagnostics
from dae_py.compiler.pipeline import compile_config
from dae_py.contract.manifest import NodeSpec, TransportSpec
from dae_py.runtime.proxy import Node

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def vmess_link(**fields: Any) -> str:
    info = {"v": "2", "ps": "hk", "add": "192.0.2.1", "port": "443", "id": UID, "aid": "0",
            "scy": "auto", "net": "tcp", "type": "none", "host": "", "path": "", "tls": "",
            "sni": "", "alpn": ""}
    info.update(fields)
    return "vmess://" + base64.b64encode(json.dumps(info).encode()).decode()


def compiled(link: str) -> tuple[Diagnostics, dict[str, Any]]:
    text = f"global: {{lan_interface: [eth0]}}\nnodes:\n  n: '{link}'\nrouting:\n  fallback: direct\n"
    try:
        checked = compile_config(None, None, text=text, name="config.yaml")
    except CompileError as exc:
        return exc.diagnostics, {}
    return checked.diags, checked.nodes["n"]


def messages(diags: Diagnostics) -> list[tuple[str, int, int, str]]:
    return [(kind, d.pos.line, d.pos.col, d.message)
            for kind, ds in (("error", diags.errors), ("warning", diags.warnings)) for d in ds]


def test_a_v2rayn_vmess_link_over_ws_and_tls_reaches_the_runtime_node() -> None:
    diags, raw = compiled(vmess_link(scy="chacha20-poly1305", net="ws", host="cdn.example",
                                     path="/ray?ed=2048", tls="tls", sni="s.example", alpn="h2,http/1.1"))
    assert not diags.errors and not diags.warnings and raw["dialable"]
    node = Node.from_manifest(NodeSpec.from_json(raw))
    assert (node.protocol, node.host, node.port, node.username) == ("vmess", "192.0.2.1", 443, UID)
    assert node.cipher == "chacha20-poly1305" and node.sni == "s.example" and node.alpn == ("h2", "http/1.1")
    assert node.transport == TransportSpec(network="ws", tls=True, path="/ray", host="cdn.example",
                                           max_early_data=2048)


def test_a_vless_link_as_clients_write_it() -> None:
    diags, raw = compiled(f"vless://{UID}@192.0.2.2:8443?type=ws&security=tls&sni=v.example"
                          "&path=%2Fws%3Fed%3D1024%26x%3D1&host=h.example&encryption=none#name")
    assert not diags.errors and not diags.warnings
    node = Node.from_manifest(NodeSpec.from_json(raw))
    assert node.username == UID and node.password is None and node.sni == "v.example"
    assert node.transport == TransportSpec(network="ws", tls=True, path="/ws?x=1", host="h.example",
                                           max_early_data=1024)
    _, h2 = compiled(f"vless://{UID}@192.0.2.2:443?type=http&security=tls&host=a.example,b.example&path=/h")
    assert NodeSpec.from_json(h2).transport == TransportSpec(network="http", tls=True, path="/h",
                                                             host="a.example,b.example")
    _, plain = compiled(f"vless://{UID}@192.0.2.2:443")
    assert NodeSpec.from_json(plain).transport == TransportSpec()


@pytest.mark.parametrize("link,col,text", [  # col: offset in the link (0: a vmess link's body)
    (vmess_link(scy="aes-256-cfb"), 0, "unknown vmess security 'aes-256-cfb' (did you mean 'aes-128-gcm'?)"),
    (vmess_link(id=""), 0, "vmess link has no UUID"),
    (vmess_link(id="my-secret-id"), 0, "user id is not a UUID"),
    (vmess_link(net="wss"), 0, "unknown transport 'wss' (did you mean 'ws'?)"),
    (vmess_link(tls="ssl"), 0, "unknown vmess tls 'ssl'"),
    (vmess_link(net="ws", path="/p?ed=lots"), 0, "early data 'ed=lots' is not a byte count"),
    (f"vless://{UID}@192.0.2.2:443?type=wss", len(f"vless://{UID}@192.0.2.2:443?"),
     "unknown transport 'wss'"),
    (f"vless://{UID}@192.0.2.2:443?encryption=aes", len(f"vless://{UID}@192.0.2.2:443?"),
     "vless encryption 'aes' is not 'none'"),
    (f"vless://{UID}@192.0.2.2:443?security=ssl", len(f"vless://{UID}@192.0.2.2:443?"),
     "unknown vless security 'ssl'"),
    ("vless://192.0.2.2:443", len("vless://"), "vless link has no UUID"),
])
def test_a_bad_option_is_an_error_at_its_place_without_the_uuid(link: str, col: int, text: str) -> None:
    diags, _ = compiled(link)
    errors = [m for m in messages(diags) if m[0] == "error"]
    assert len(errors) == 1, errors
    _, line, at, message = errors[0]
    # the link starts at column 7 ("  n: '"); a vmess body is one opaque token: its start
    assert line == 3 and at == 7 + (col or len("vmess://")), errors
    assert text in message
    assert UID not in message and "my-secret-id" not in message


@pytest.mark.parametrize("link,text", [
    (vmess_link(net="grpc"), "the 'grpc' transport is not supported (no gRPC transport"),
    (vmess_link(net="quic", tls="tls"), "the 'quic' transport is not supported (no QUIC transport"),
    (vmess_link(aid="64"), "alterId 64 asks for the legacy (MD5) VMess header"),
    (vmess_link(type="http"), "the tcp 'http' header obfuscation is not supported"),
    (f"vless://{UID}@192.0.2.2:443?security=reality", "vless with 'reality' is not supported"),
    (f"vless://{UID}@192.0.2.2:443?security=tls&flow=xtls-rprx-vision", "vless flow 'xtls-rprx-vision'"),
])
def test_what_the_runtime_cannot_dial_is_a_warning_and_not_selected(link: str, text: str) -> None:
    diags, raw = compiled(link)
    assert not diags.errors
    warnings = [m[3] for m in messages(diags) if m[0] == "warning"]
    assert any(text in w for w in warnings), warnings
    assert raw["dialable"] is False
