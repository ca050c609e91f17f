"""Share links as providers write them and subscription bodies in the three forms users meet
(base64 link lists, SIP008 JSON, Clash/mihomo YAML), through the one parser both halves use
(contract/proxy_links.py, contract/subformats.py): what each gives, what is dropped and why, and
that no reason carries a password or a UUID."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from dae_py.contract.capabilities import RUNTIME_PROTOCOLS
from dae_py.contract.nodefilter import NodeFilter
from dae_py.contract.proxy_links import LinkError, parse_link
from dae_py.contract.subformats import SubscriptionFormatError, entries, parse_body
from dae_py.contract.urls import redact_url

PW = "pW-s3cret+/x"
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
DIALABLE = frozenset(RUNTIME_PROTOCOLS)


def b64(text: str, urlsafe: bool = False, pad: bool = True) -> str:
    out = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(text.encode()).decode()
    return out if pad else out.rstrip("=")


def vmess(**info: Any) -> str:
    base = {"v": "2", "ps": "vm", "add": "vm.example", "port": "443", "id": UUID, "aid": "0",
            "scy": "auto", "net": "tcp", "type": "none", "host": "", "path": "", "tls": ""}
    return "vmess://" + b64(json.dumps({**base, **info}))


# (link, what the node dict must hold)
GOOD = [
    # SIP002, userinfo base64url without padding (shadowsocks-android, Outline)
    (f"ss://{b64('aes-256-gcm:' + PW, urlsafe=True, pad=False)}@ss.example:8388#HK%2001",
     {"protocol": "ss", "host": "ss.example", "port": 8388, "cipher": "aes-256-gcm", "password": PW}),
    # SIP002, standard base64 with padding (v2rayN writes it so)
    (f"ss://{b64('chacha20-ietf-poly1305:' + PW)}@[2001:db8::1]:443/?#v6",
     {"host": "2001:db8::1", "port": 443, "cipher": "chacha20-ietf-poly1305"}),
    # SIP002 with the method and password in clear (percent-encoded), as some panels emit
    ("ss://aes-128-gcm:p%40ss@1.2.3.4:8388", {"cipher": "aes-128-gcm", "password": "p@ss"}),
    # the legacy form: base64 of the whole method:password@host:port
    ("ss://" + b64(f"aes-128-gcm:{PW}@10.1.1.1:8389") + "#old",
     {"host": "10.1.1.1", "port": 8389, "password": PW}),
    ("trojan://" + PW.replace("+", "%2B").replace("/", "%2F") + "@tj.example:443?sni=cdn.example&alpn=h2,http/1.1#t",
     {"protocol": "trojan", "password": PW, "sni": "cdn.example", "alpn": ["h2", "http/1.1"]}),
    ("trojan://secret@tj.example?allowInsecure=1", {"port": 443, "allow_insecure": True}),
    (vmess(), {"protocol": "vmess", "username": UUID, "cipher": "auto", "host": "vm.example", "port": 443}),
    (vmess(net="ws", path="/ray?ed=2048", host="cdn.example", tls="tls", sni="cdn.example", port=443),
     {"transport": {"network": "ws", "tls": True, "path": "/ray", "host": "cdn.example", "max_early_data": 2048,
                    "early_data_header": "Sec-WebSocket-Protocol"}, "sni": "cdn.example"}),
    (vmess(port=10086, scy="chacha20-poly1305"), {"port": 10086, "cipher": "chacha20-poly1305"}),
    (f"vless://{UUID}@vl.example:443?encryption=none&security=tls&type=ws&host=h.example&path=%2Fws&sni=s.example#vl",
     {"protocol": "vless", "username": UUID, "sni": "s.example",
      "transport": {"network": "ws", "tls": True, "path": "/ws", "host": "h.example", "max_early_data": 0,
                    "early_data_header": "Sec-WebSocket-Protocol"}}),
    (f"vless://{UUID}@vl.example:8443?type=tcp&security=none", {"transport": {
        "network": "tcp", "tls": False, "path": "/", "host": None, "max_early_data": 0,
        "early_data_header": "Sec-WebSocket-Protocol"}}),
    ("socks5://user:p%3Ass@10.0.0.9:1080", {"protocol": "socks5", "username": "user", "password": "p:ss"}),
    ("socks5://10.0.0.9", {"port": 1080, "username": None}),
    ("http://u:p@proxy.example:3128", {"protocol": "http", "port": 3128}),
    ("https://u:p@proxy.example?sni=front.example", {"protocol": "https", "port": 443, "sni": "front.example"}),
]


@pytest.mark.parametrize("link,want", GOOD, ids=[f"{i}-{lk.split(':')[0]}" for i, (lk, _) in enumerate(GOOD)])
def test_real_world_link_forms_parse_into_the_manifest_node(link: str, want: dict[str, Any]) -> None:
    node = parse_link("n", link.partition("#")[0])
    assert node.pop("unsupported", None) is None
    for key, value in want.items():
        assert node[key] == value, key


BAD = [
    ("ss://" + b64("aes-128-gmc:" + PW, urlsafe=True) + "@h:1", "unknown ss method 'aes-128-gmc'"),
    ("ss://" + b64("rc4-md5:" + PW) + "@h:1", "stream cipher"),
    ("ss://" + b64("aes-128-gcm:") + "@h:1", "has no password"),
    ("trojan://h.example:443", "has no password"),
    ("ss://!!not-base64!!", "neither SIP002 nor base64"),
    (vmess(id="not-a-uuid"), "is not a UUID"),
    (vmess(net="carrier-pigeon"), "unknown transport 'carrier-pigeon'"),
    (vmess(scy="aes-512-gcm"), "unknown vmess security"),
    ("vmess://" + b64("{not json"), "not v2rayN base64 JSON"),
    (f"vless://{UUID}@h:443?type=wss", "unknown transport 'wss' (did you mean 'ws'?)"),
    (f"vless://{UUID}@h:443?encryption=aes", "encryption 'aes' is not 'none'"),
    ("socks5://h:99999", "invalid port"),
    ("gopher://h:70", "unknown protocol 'gopher'"),
]


@pytest.mark.parametrize("link,reason", BAD, ids=[r for _, r in BAD])
def test_bad_links_are_refused_with_the_reason_and_no_secret(link: str, reason: str) -> None:
    with pytest.raises(LinkError) as err:
        parse_link("n", link)
    assert reason in str(err.value)
    assert PW not in str(err.value) and "not-a-uuid" not in str(err.value) and UUID not in str(err.value)


LINKS = [
    f"ss://{b64('aes-128-gcm:' + PW, urlsafe=True, pad=False)}@10.0.0.1:8388#HK%201",
    f"trojan://{PW.replace('+', '%2B').replace('/', '%2F')}@10.0.0.2:443?sni=a.example#JP%201",
    vmess(ps="US 1", add="10.0.0.3"),
    f"vless://{UUID}@10.0.0.4:443?security=reality&type=tcp#US%20reality",  # dropped: reality
    "hysteria2://pw@10.0.0.5:443#HY",  # dropped: unknown protocol
    "socks5://10.0.0.6:1080",  # unnamed
]


def test_a_base64_link_list_gives_named_tagged_nodes_and_lists_the_dropped() -> None:
    parsed = parse_body("prov", b64("\n".join(LINKS)).encode(), dialable=DIALABLE)
    assert parsed.form == "links"
    assert [(n["name"], n["protocol"], n["tag"]) for n in parsed.nodes] == [
        ("HK 1", "ss", "prov"), ("JP 1", "trojan", "prov"), ("US 1", "vmess", "prov"), ("prov-6", "socks5", "prov")]
    assert len(parsed.dropped) == 2
    assert parsed.dropped[0].startswith("US reality: ") and "reality" in parsed.dropped[0]
    assert parsed.dropped[1].startswith("HY: ") and "unknown protocol 'hysteria2'" in parsed.dropped[1]
    assert not any(PW in d or UUID in d for d in parsed.dropped)
    # plain text (not base64) and a URL-safe, unpadded base64 body give the same
    assert [n["name"] for n in parse_body("prov", "\n".join(LINKS), dialable=DIALABLE).nodes] == \
        [n["name"] for n in parsed.nodes]
    assert len(parse_body("prov", b64("\r\n".join(LINKS), urlsafe=True, pad=False),
                          dialable=DIALABLE).nodes) == 4


def test_sip008_json_gives_shadowsocks_nodes() -> None:
    body = json.dumps({"version": 1, "servers": [
        {"id": "27b8a625", "remarks": "Server A", "server": "10.0.0.1", "server_port": 8388,
         "password": PW, "method": "aes-256-gcm"},
        {"id": "7842c068", "remarks": "Server B", "server": "2001:db8::2", "server_port": 8389,
         "password": PW, "method": "chacha20-ietf-poly1305"},
        {"id": "x", "remarks": "Bad", "server": "10.0.0.3", "server_port": 1, "password": PW, "method": "rc4-md5"},
    ]})
    parsed = parse_body("s8", body, dialable=DIALABLE)
    assert parsed.form == "sip008"
    assert [(n["name"], n["host"], n["port"], n["cipher"], n["password"]) for n in parsed.nodes] == [
        ("Server A", "10.0.0.1", 8388, "aes-256-gcm", PW),
        ("Server B", "2001:db8::2", 8389, "chacha20-ietf-poly1305", PW)]
    assert parsed.dropped and parsed.dropped[0].startswith("Bad: ") and "stream cipher" in parsed.dropped[0]


CLASH = f"""
port: 7890
mode: rule
proxies:
  - {{name: "ss1", type: ss, server: 10.0.0.1, port: 8388, cipher: aes-128-gcm, password: "{PW}", udp: true}}
  - name: trojan-ws
    type: trojan
    server: 10.0.0.2
    port: 443
    password: "{PW}"
    sni: cdn.example
    skip-cert-verify: true
  - name: vm-ws
    type: vmess
    server: 10.0.0.3
    port: 443
    uuid: {UUID}
    alterId: 0
    cipher: auto
    tls: true
    servername: cdn.example
    network: ws
    ws-opts: {{path: /ray, headers: {{Host: cdn.example}}, max-early-data: 2048}}
  - {{name: vl, type: vless, server: 10.0.0.4, port: 443, uuid: {UUID}, network: tcp, tls: true, servername: v.example}}
  - {{name: s5, type: socks5, server: 10.0.0.5, port: 1080, username: u, password: "{PW}"}}
  - {{name: h, type: http, server: 10.0.0.6, port: 8443, tls: true}}
  - {{name: hy, type: hysteria2, server: 10.0.0.7, port: 443, password: "{PW}"}}
  - {{name: old-vmess, type: vmess, server: 10.0.0.8, port: 443, uuid: {UUID}, alterId: 64, cipher: auto}}
  - {{name: badport, type: socks5, server: 10.0.0.9, port: lots}}
proxy-groups:
  - {{name: auto, type: url-test, proxies: [ss1, vm-ws]}}
rules: ["MATCH,auto"]
"""


def test_clash_yaml_proxies_become_nodes_as_their_links_would() -> None:
    parsed = parse_body("clash", CLASH, dialable=DIALABLE)
    assert parsed.form == "clash"
    got = {n["name"]: n for n in parsed.nodes}
    assert list(got) == ["ss1", "trojan-ws", "vm-ws", "vl", "s5", "h"]
    assert (got["ss1"]["cipher"], got["ss1"]["password"]) == ("aes-128-gcm", PW)
    assert (got["trojan-ws"]["password"], got["trojan-ws"]["sni"], got["trojan-ws"]["allow_insecure"]) == \
        (PW, "cdn.example", True)
    assert got["vm-ws"]["transport"] == {"network": "ws", "tls": True, "path": "/ray", "host": "cdn.example",
                                         "max_early_data": 2048, "early_data_header": "Sec-WebSocket-Protocol"}
    assert got["vm-ws"]["sni"] == "cdn.example" and got["vm-ws"]["username"] == UUID
    assert got["vl"]["transport"]["tls"] is True and got["vl"]["sni"] == "v.example"
    assert (got["s5"]["username"], got["s5"]["password"]) == ("u", PW)
    assert got["h"]["protocol"] == "https"
    reasons = dict(d.split(": ", 1) for d in parsed.dropped)
    assert set(reasons) == {"hy", "old-vmess", "badport"}
    assert "unsupported protocol 'hysteria2'" in reasons["hy"]
    assert "alterId 64" in reasons["old-vmess"]
    assert "port" in reasons["badport"]
    assert not any(PW in d or UUID in d for d in parsed.dropped)


@pytest.mark.parametrize("body,why", [
    (b"", "empty"), (b"\xff\xfe\x00garbage", "not UTF-8"), (b"<html>502 Bad Gateway</html>", "neither"),
    (b'{"error": "token expired"}', "SIP008"), (b"proxies: [unclosed", "not YAML"),
    (b"proxies: 3\n", "'proxies:' list"),
])
def test_a_body_that_is_no_subscription_raises(body: bytes, why: str) -> None:
    with pytest.raises(SubscriptionFormatError, match=why):
        entries(body)


def test_names_taken_by_config_nodes_are_prefixed_with_the_tag() -> None:
    parsed = parse_body("p", "socks5://10.0.0.1:1080#a\nsocks5://10.0.0.2:1080#a\n", taken={"a"}, dialable=DIALABLE)
    assert [n["name"] for n in parsed.nodes] == ["p-a", "p-2"]


def test_the_node_filter_selects_by_subtag_and_name_in_daes_order() -> None:
    f = NodeFilter.from_json([
        {"calls": [{"func": "subtag", "params": [{"key": None, "value": "b"}]},
                   {"func": "name", "negated": True, "params": [{"key": "keyword", "value": "slow"}]}]},
        {"calls": [{"func": "name", "params": [{"key": "regex", "value": "^hk"}]}], "add_latency_ms": 30},
    ])
    pool = [("hk1", "a"), ("x", "b"), ("x-slow", "b"), ("hk2", None), ("y", "b")]
    assert f.select(pool) == {"x": 0.0, "y": 0.0, "hk1": 30.0, "hk2": 30.0}
    assert NodeFilter().select(pool) == dict.fromkeys(["hk1", "x", "x-slow", "hk2", "y"], 0.0)
    with pytest.raises(ValueError, match="unknown function"):
        NodeFilter.from_json([{"calls": [{"func": "protocol", "params": []}]}])


@pytest.mark.parametrize("url,shown", [
    ("https://sub.example.com/api/v1/client/subscribe?token=abcdef123", "https://sub.example.com/***"),
    ("https://u:pw@sub.example.com:8443/link/Xy7Tok3n", "https://sub.example.com:8443/***"),
    ("https://sub.example.com", "https://sub.example.com"),
    ("file:///etc/dae/sub.txt", "file:///etc/dae/sub.txt"),
])
def test_subscription_urls_are_shown_without_their_token(url: str, shown: str) -> None:
    assert redact_url(url) == shown
