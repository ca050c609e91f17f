"""ss:// links with SIP003 `plugin=` and the Shadowsocks 2022 methods, and `a -> b` chains, at
compile time: what reaches the manifest for the runtime, and what is an error."""
from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.compiler.test_diagnostics import run_check

SECRET = "s3cr3t-Pw"
B64 = base64.urlsafe_b64encode(f"aes-128-gcm:{SECRET}".encode()).decode().rstrip("=")


def config(*links: str) -> str:
    nodes = "".join(f"  n{i}: '{link}'\n" for i, link in enumerate(links, 1))
    return ("global: {lan_interface: [eth0]}\nnodes:\n" + nodes
            + "groups:\n  g: {policy: random}\nrouting:\n  fallback: g\n")


def build(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
          *links: str) -> tuple[dict[str, Any], str]:
    rc, _, err = run_check(tmp_path, config(*links), capsys, monkeypatch, "-o", "build")
    assert rc == 0, err
    manifest = json.loads((tmp_path / "build/manifest.json").read_text())
    return {n["name"]: n for n in manifest["nodes"]}, err


def test_a_sip003_plugin_link_is_dialable_with_the_plugin_and_its_options(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, err = build(tmp_path, capsys, monkeypatch,
                       f"ss://{B64}@10.0.0.1:8388/?plugin=obfs-local%3Bobfs%3Dhttp%3Bobfs-host%3Dwww.example.com#x",
                       f"ss://{B64}@10.0.0.2:8388/?plugin=v2ray-plugin",
                       f"ss://{B64}@10.0.0.3:8388/?plugin=")
    assert "warning" not in err and SECRET not in err
    assert (nodes["n1"]["plugin"], nodes["n1"]["plugin_opts"], nodes["n1"]["dialable"]) == (
        "obfs-local", "obfs=http;obfs-host=www.example.com", True)
    assert (nodes["n2"]["plugin"], nodes["n2"]["plugin_opts"]) == ("v2ray-plugin", "")
    assert "plugin" not in nodes["n3"]  # `plugin=` with no name: no plugin


def test_a_plugin_name_that_is_not_a_program_name_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = run_check(tmp_path, config(f"ss://{B64}@10.0.0.1:8388/?plugin=rm%20-rf%3Bx"), capsys,
                           monkeypatch, "--check")
    assert rc == 1 and "ss plugin name 'rm -rf' is not a program name" in err
    assert SECRET not in err


KEY16 = base64.b64encode(bytes(range(16))).decode()


def test_a_2022_link_with_a_base64_key_of_the_right_size_is_dialable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    quoted = KEY16.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D")
    nodes, err = build(tmp_path, capsys, monkeypatch, f"ss://2022-blake3-aes-128-gcm:{quoted}@10.0.0.1:8388")
    assert "warning" not in err and KEY16 not in err
    assert (nodes["n1"]["cipher"], nodes["n1"]["password"], nodes["n1"]["dialable"]) == (
        "2022-blake3-aes-128-gcm", KEY16, True)


@pytest.mark.parametrize("password,message", [
    ("not-base64!", "a 2022-blake3-aes-256-gcm password must be the base64 of a 32-byte key"),
    (KEY16, "a 2022-blake3-aes-256-gcm key must be 32 bytes; the password's base64 decodes to 16"),
])
def test_a_2022_key_that_is_not_base64_of_the_right_size_is_an_error(
        password: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    quoted = password.replace("=", "%3D").replace("+", "%2B").replace("/", "%2F")
    rc, _, err = run_check(tmp_path, config(f"ss://2022-blake3-aes-256-gcm:{quoted}@10.0.0.1:8388"), capsys,
                           monkeypatch, "--check")
    assert rc == 1 and message in err, err
    assert password not in err


def test_a_socks5_to_ss_chain_is_dialable_with_its_first_hop_in_the_manifest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    nodes, err = build(tmp_path, capsys, monkeypatch, f"socks5://10.0.0.9:1080 -> ss://{B64}@10.0.0.1:8388")
    assert nodes["n1"]["dialable"] is True and nodes["n1"]["protocol"] == "ss"
    assert [(h["protocol"], h["host"], h["port"]) for h in nodes["n1"]["chain"]] == [("socks5", "10.0.0.9", 1080)]
    assert SECRET not in err
