"""The `subscriptions:` section at compile time: every source reaches the manifest (for the
runtime to fetch), `file://` sources are read now in all three forms, dropped nodes are listed
with the reason (issue 12), groups carry their filter for the runtime, and a group that only an
https:// subscription can fill is a warning, not an error."""
from __future__ import annotations

import base64
from pathlib import Path

import pytest

from dae_py.compiler.pipeline import compile_config, manifest_for
from dae_py.contract.manifest import Manifest
from dae_py.contract.nodefilter import NodeFilter
from tests.compiler.test_diagnostics import run_check

PW = "Sub-s3cret"
TOKEN = "tok3nXYZ"


def config(subs: str, groups: str = "  g: {filter: 'subtag(local)', policy: min_moving_avg}\n",
           rules: str = "  fallback: g\n") -> str:
    return ("global: {lan_interface: [eth0]}\n"
            "nodes:\n  mine: 'socks5://10.0.0.1:1080'\n"
            f"subscriptions:\n{subs}groups:\n{groups}routing:\n{rules}")


def test_file_and_https_sources_reach_the_manifest_and_groups_carry_their_filter(tmp_path: Path) -> None:
    links = [f"ss://{base64.urlsafe_b64encode(f'aes-128-gcm:{PW}'.encode()).decode()}@10.0.0.2:8388#hk1",
             "socks5://10.0.0.3:1080#hk2", "hysteria2://x@10.0.0.4:443#hy"]
    (tmp_path / "sub.txt").write_text(base64.b64encode("\n".join(links).encode()).decode())
    text = config(f"  local: 'file://sub.txt'\n  remote: 'https://sub.example/api?token={TOKEN}'\n",
                  groups="  g: {filter: ['subtag(local)', 'name(keyword: x) [add_latency: 10ms]'], policy: fixed(1)}\n")
    (tmp_path / "config.yaml").write_text(text)
    checked = compile_config(tmp_path / "config.yaml", None)
    m = Manifest.from_json(manifest_for(checked, "linear").to_json())
    assert [(s.name, s.url) for s in m.subscriptions] == [
        ("local", (tmp_path / "sub.txt").resolve().as_uri()), ("remote", f"https://sub.example/api?token={TOKEN}")]
    assert [(n.name, n.tag) for n in m.nodes] == [("mine", None), ("hk1", "local"), ("hk2", "local")]
    g = m.groups[0]
    assert g.nodes == ("hk1", "hk2") and g.fixed_index == 1 and g.extra["fixed_n"] == 1
    f = NodeFilter.from_json(g.extra["filter"])
    assert f.select([("a", "remote"), ("box", None), ("z", "local")]) == {"z": 0.0, "box": 10.0}
    warnings = [d.message for d in checked.diags.items if d.severity == "warning"]
    assert any("dropped node hy: " in w and "hysteria2" in w for w in warnings), warnings


def test_a_clash_file_is_read_at_compile_time(tmp_path: Path) -> None:
    (tmp_path / "clash.yaml").write_text(
        "proxies:\n"
        f"  - {{name: a, type: trojan, server: 10.0.0.5, port: 443, password: {PW}, sni: t.example}}\n"
        "  - {name: b, type: wireguard, server: 10.0.0.6, port: 51820}\n")
    (tmp_path / "config.yaml").write_text(config("  local: 'file://clash.yaml'\n"))
    checked = compile_config(tmp_path / "config.yaml", None)
    assert checked.groups[0]["nodes"] == ["a"]
    warnings = [d.message for d in checked.diags.items if d.severity == "warning"]
    assert "subscription 'local': dropped node b: unsupported protocol 'wireguard'" in warnings


def test_a_group_only_a_remote_subscription_fills_is_a_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    text = config(f"  remote: 'https://sub.example/link/{TOKEN}'\n",
                  groups="  g: {filter: 'subtag(remote)', policy: random}\n")
    rc, _, err = run_check(tmp_path, text, capsys, monkeypatch, "--check")
    assert rc == 0, err
    assert "group 'g' has no node until the runtime fetches subscription(s) remote" in err
    assert TOKEN not in err


def test_a_subscription_url_with_no_host_is_an_error_without_its_token(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = run_check(tmp_path, config(f"  remote: 'https:///x?token={TOKEN}'\n"), capsys, monkeypatch, "--check")
    assert rc == 1 and "subscription 'remote': https:///*** has no host" in err and TOKEN not in err


def test_a_subscription_can_carry_its_own_refresh_interval(tmp_path: Path) -> None:
    (tmp_path / "sub.txt").write_text("socks5://10.0.0.3:1080#hk2\n")
    text = config(f"  remote: {{url: 'https://sub.example/api?token={TOKEN}', interval: 6h}}\n"
                  "  local: {url: 'file://sub.txt'}\n  plain: 'https://sub.example/other'\n")
    (tmp_path / "config.yaml").write_text(text)
    checked = compile_config(tmp_path / "config.yaml", None)
    m = Manifest.from_json(manifest_for(checked, "linear").to_json())
    assert [(s.name, s.refresh_s) for s in m.subscriptions] == [("remote", 21600.0), ("local", 3600.0),
                                                                ("plain", 3600.0)]
    assert [n.name for n in m.nodes] == ["mine", "hk2"]


@pytest.mark.parametrize("entry, message", [
    ("{url: 'https://sub.example/x', interval: 10s}",
     ":5:52: error: subscription 'remote': interval: '10s' is out of range (60s to 720h)"),
    ("{url: 'https://sub.example/x', every: 1h}", "every"),
    ("{interval: 1h}", "url"),
])
def test_a_bad_interval_or_mapping_is_an_error_at_its_place(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, entry: str,
                                                            message: str) -> None:
    rc, _, err = run_check(tmp_path, config(f"  remote: {entry}\n"), capsys, monkeypatch, "--check")
    assert rc == 1 and message in err, err
