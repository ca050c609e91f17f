"""ss:// (SIP002) and trojan:// links at compile time: what a good link puts in the manifest,
what a bad one makes dae-compile say (file:line:col, caret on the offending part), what the
runtime cannot dial yet (a warning, never silence), and that no password is ever printed."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from dae_py.compiler.urls import mask_with_column
from dae_py.contract.proxy_links import mask_link
from tests.compiler.test_diagnostics import run_check

SECRET = "s3cr3t-Pw"
B64 = base64.urlsafe_b64encode(f"aes-256-gcm:{SECRET}".encode()).decode().rstrip("=")


def config(*links: str) -> str:
    nodes = "".join(f"  n{i}: '{link}'\n" for i, link in enumerate(links, 1))
    return ("global: {lan_interface: [eth0]}\nnodes:\n" + nodes
            + "groups:\n  g: {policy: random}\nrouting:\n  fallback: g\n")


@pytest.mark.parametrize("link,needle,first", [
    (f"ss://aes-128-gmc:{SECRET}@10.0.0.1:8388", "aes",
     "config.yaml:3:{col}: error: node 'n1': unknown ss method 'aes-128-gmc' (did you mean 'aes-128-gcm'?)"),
    (f"ss://aes-256-cfb:{SECRET}@10.0.0.1:8388", "aes",
     "config.yaml:3:{col}: error: node 'n1': ss method 'aes-256-cfb' is a stream cipher without "
     "authentication; not supported (use one of aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305)"),
    ("ss://aes-128-gcm:@10.0.0.1:8388", "aes",
     "config.yaml:3:{col}: error: node 'n1': ss link has no password"),
    (f"ss://{B64}@10.0.0.1:99999", "99999",
     "config.yaml:3:{col}: error: node 'n1': invalid port in 'ss://***@10.0.0.1:99999'"),
    (f"trojan://{SECRET}@10.0.0.1:70000?sni=a.test", "70000",
     "config.yaml:3:{col}: error: node 'n1': invalid port in 'trojan://***@10.0.0.1:70000?sni=a.test'"),
    ("trojan://10.0.0.1:443", "10.0",
     "config.yaml:3:{col}: error: node 'n1': trojan link has no password (expected "
     "it before '@host:port')"),
], ids=["bad-cipher", "stream-cipher", "no-password", "bad-port-ss", "bad-port-trojan",
        "trojan-no-password"])
def test_bad_link_is_an_error_at_the_offending_part(link: str, needle: str, first: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = run_check(tmp_path, config(link), capsys, monkeypatch, "--check")
    lines = err.splitlines()
    col = config(link).splitlines()[2].index(needle) + 1
    assert rc == 1 and lines[0] == first.format(col=col)
    assert SECRET not in err and B64 not in err
    # The echoed line is masked (a secret becomes '***', whatever its length) and the caret
    # stays under the same character, or at the start of the mask it points into.
    shown, caret = mask_with_column(config(link).splitlines()[2], col - 1)
    assert lines[1] == "  " + shown and lines[2] == "  " + " " * caret + "^"


@pytest.mark.parametrize("link,needle,message", [
    (f"ss://aes-192-gcm:{SECRET}@10.0.0.1:8388", "aes",
     "node 'n1': ss method 'aes-192-gcm' is not supported yet (supported: aes-128-gcm, aes-256-gcm, "
     "chacha20-ietf-poly1305); groups will not select it"),
    (f"ss://2022-blake3-aes-128-gcm:{SECRET}%3A{SECRET}@10.0.0.1:8388", "2022",
     "node 'n1': Shadowsocks 2022 multi-user keys (iPSK:uPSK, SIP023 identity headers) are not "
     "supported; groups will not select it"),
    (f"trojan://{SECRET}@10.0.0.1:443?type=grpc&serviceName=x", "type=",
     "node 'n1': trojan over 'grpc' transport is not supported yet; groups will not select it"),
], ids=["ss-aes-192", "ss2022-eih", "trojan-grpc"])
def test_what_the_runtime_cannot_dial_yet_is_a_warning_with_a_position(
        link: str, needle: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    text = config(link, "socks5://10.0.0.2:1080")
    rc, _, err = run_check(tmp_path, text, capsys, monkeypatch, "-o", "build")
    assert rc == 0, err
    col = text.splitlines()[2].index(needle) + 1
    assert f"config.yaml:3:{col}: warning: {message}" in err.splitlines()
    assert SECRET not in err and B64 not in err
    nodes = {n["name"]: n for n in json.loads((tmp_path / "build/manifest.json").read_text())["nodes"]}
    assert nodes["n1"]["dialable"] is False and nodes["n2"]["dialable"] is True


def test_good_links_fill_the_manifest_fields_the_runtime_reads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = config(f"ss://{B64}@10.0.0.1:8388#hk",
                  "ss://chacha20-ietf-poly1305:p%40ss%3Aw@[fd00::1]:8389",
                  f"trojan://{SECRET}@10.0.0.3:443?sni=t.test&allowInsecure=1&alpn=h2,http/1.1#t")
    rc, _, err = run_check(tmp_path, text, capsys, monkeypatch, "-o", "build")
    assert rc == 0, err
    manifest_file = tmp_path / "build/manifest.json"
    assert manifest_file.stat().st_mode & 0o077 == 0  # it holds the passwords
    nodes = {n["name"]: n for n in json.loads(manifest_file.read_text())["nodes"]}
    assert {k: nodes["n1"][k] for k in ("protocol", "host", "port", "cipher", "password",
                                        "username", "dialable")} == {
        "protocol": "ss", "host": "10.0.0.1", "port": 8388, "cipher": "aes-256-gcm",
        "password": SECRET, "username": None, "dialable": True}
    assert (nodes["n2"]["cipher"], nodes["n2"]["password"], nodes["n2"]["host"]) == (
        "chacha20-ietf-poly1305", "p@ss:w", "fd00::1")
    assert {k: nodes["n3"][k] for k in ("protocol", "password", "sni", "allow_insecure", "alpn",
                                        "port", "dialable")} == {
        "protocol": "trojan", "password": SECRET, "sni": "t.test", "allow_insecure": True,
        "alpn": ["h2", "http/1.1"], "port": 443, "dialable": True}
    assert SECRET not in err


@pytest.mark.parametrize("link,masked", [
    ("socks5://alice:pw@10.0.0.1:1080", "socks5://***@10.0.0.1:1080"),
    ("trojan://pw@h:443?sni=x#name", "trojan://***@h:443?sni=x#name"),
    (f"ss://{B64}@h:1", "ss://***@h:1"),
    ("ss://" + base64.b64encode(b"aes-128-gcm:pw@1.2.3.4:80").decode() + "#n", "ss://***#n"),
    ("socks5://10.0.0.1:1080", "socks5://10.0.0.1:1080"),
    # standard base64 ('/', '+') and unescaped '#', '?', '@' in the user info stay hidden whole
    ("ss://YWVz/LTEy+pw==@h:1", "ss://***@h:1"),
    ("trojan://pa#s?s@w@h:443?sni=x", "trojan://***@h:443?sni=x"),
])
def test_mask_link_hides_every_secret(link: str, masked: str) -> None:
    assert mask_link(link) == masked
