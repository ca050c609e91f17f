"""The runtime's subscriptions: a build whose group waits for an https:// subscription gets the
nodes the fetch gives, keeps the last good copy (0600, in the store) when the source is
unreachable or its body broken, restarts from that copy with no network, and never logs the
URL's token or a node's password. The fetch itself runs against a real HTTPS server on loopback
(aiohttp + a trustme CA)."""
from __future__ import annotations

import asyncio
import base64
import logging
import stat
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from dae_py.compiler.pipeline import compile_config, manifest_for
from dae_py.contract.manifest import Manifest
from dae_py.runtime.relay.outbounds import OutboundTable
from dae_py.runtime.subscriptions import SubscriptionManager
from dae_py.runtime.subscriptions.fetch import FetchError, fetch_body

TOKEN = "T0kenABC123"
PW = "n0de-Passw0rd"
URL = f"https://sub.example/api/v1/client/subscribe?token={TOKEN}"
LINKS = [f"ss://{base64.urlsafe_b64encode(f'aes-128-gcm:{PW}'.encode()).decode()}@10.0.0.2:8388#hk1",
         "socks5://10.0.0.3:1080#hk2", "socks5://10.0.0.4:1080#us1", "hysteria2://x@10.0.0.5:443#hy"]
BODY = base64.b64encode("\n".join(LINKS).encode())


def manifest(tmp_path: Path) -> Manifest:
    (tmp_path / "config.yaml").write_text(
        "global: {lan_interface: [eth0]}\nnodes:\n  mine: 'socks5://10.0.0.1:1080'\n"
        f"subscriptions:\n  prov: '{URL}'\n"
        "groups:\n  hk: {filter: \"subtag(prov) && name(keyword: hk)\", policy: fixed(1)}\n"
        "  all: {policy: min_moving_avg}\n"
        "routing:\n  rules: ['dport(443) -> hk']\n  fallback: all\n")
    checked = compile_config(tmp_path / "config.yaml", None)
    return Manifest.from_json(manifest_for(checked, "linear").to_json())


class Source:
    """A fake fetcher: the body it serves, or the error it raises."""

    def __init__(self, body: bytes | None = BODY, error: str | None = None) -> None:
        self.body, self.error, self.calls = body, error, 0

    async def __call__(self, url: str, so_mark: int) -> bytes:
        self.calls += 1
        assert url == URL
        if self.error:
            raise FetchError(self.error)
        assert self.body is not None
        return self.body


async def run(m: Manifest, store: Path, source: Source) -> tuple[dict[str, list[str]], SubscriptionManager]:
    table = OutboundTable.from_manifest(m)
    mgr = SubscriptionManager(m, table.groups(), store, fetch=source)
    await mgr.start()
    groups = {g.name: [n.name for n in g.nodes] for g in table.groups()}
    fixed = {g.name: g.spec.fixed_index for g in table.groups()}
    await mgr.close()
    for g in table.groups():
        await g.close()
    groups["fixed"] = [str(fixed["hk"])]
    return groups, mgr


def test_fetched_nodes_join_their_groups_and_the_copy_is_stored_0600(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = manifest(tmp_path)
    caplog.set_level(logging.INFO)
    groups, _ = asyncio.run(run(m, tmp_path / "store", Source()))
    assert groups["hk"] == ["hk1", "hk2"] and groups["fixed"] == ["1"]
    assert groups["all"] == ["mine", "hk1", "hk2", "us1"]
    copy = tmp_path / "store" / "prov.sub"
    assert copy.read_bytes() == BODY
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and stat.S_IMODE(copy.parent.stat().st_mode) == 0o700
    assert "dropped node hy: " in caplog.text and "hysteria2" in caplog.text
    assert "https://sub.example/***" in caplog.text
    assert TOKEN not in caplog.text and PW not in caplog.text


@pytest.mark.parametrize("second", [Source(error="cannot connect: Network is unreachable"),
                                    Source(body=b"<html>502 Bad Gateway</html>"),
                                    Source(body=base64.b64encode(b"hysteria2://x@10.0.0.5:443#hy"))],
                         ids=["unreachable", "broken-body", "nothing-dialable"])
def test_a_restart_without_a_good_fetch_uses_the_last_good_copy(
        second: Source, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = manifest(tmp_path)
    asyncio.run(run(m, tmp_path / "store", Source()))
    caplog.clear()
    groups, mgr = asyncio.run(run(m, tmp_path / "store", second))
    assert groups["hk"] == ["hk1", "hk2"] and groups["all"] == ["mine", "hk1", "hk2", "us1"]
    assert "keeping the last good copy (3 nodes" in caplog.text
    assert (tmp_path / "store" / "prov.sub").read_bytes() == BODY  # not overwritten
    assert mgr.status()["prov"]["error"]
    assert TOKEN not in caplog.text and PW not in caplog.text


def test_with_no_copy_and_no_network_the_group_waits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    groups, _ = asyncio.run(run(manifest(tmp_path), tmp_path / "store", Source(error="timed out after 15s")))
    assert groups["hk"] == [] and groups["all"] == ["mine"]
    assert "its groups have none of its nodes" in caplog.text and TOKEN not in caplog.text


def test_refresh_replaces_the_nodes_and_keeps_a_staying_nodes_object(tmp_path: Path) -> None:
    m = manifest(tmp_path)

    async def scenario() -> tuple[list[str], bool]:
        table = OutboundTable.from_manifest(m)
        source = Source()
        mgr = SubscriptionManager(m, table.groups(), tmp_path / "store", fetch=source)
        await mgr.start()
        hk = next(g for g in table.groups() if g.name == "hk")
        hk1 = hk.nodes[0]
        source.body = base64.b64encode("\n".join([LINKS[0], "socks5://10.0.0.9:1080#hk3"]).encode())
        assert await mgr.refresh(m.subscriptions[0])
        mgr.apply()
        names = [n.name for n in hk.nodes]
        same = hk.nodes[0] is hk1
        await mgr.close()
        return names, same

    names, same = asyncio.run(scenario())
    assert names == ["hk1", "hk3"] and same


def test_fetch_over_https_verifies_the_server_and_reports_http_errors(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    async def scenario() -> tuple[bytes, str, str]:
        import ssl

        async def sub(request: web.Request) -> web.Response:
            return web.Response(body=BODY) if request.query.get("token") == TOKEN else web.Response(status=403)

        app = web.Application()
        app.router.add_get("/sub", sub)
        runner = web.AppRunner(app)
        await runner.setup()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr] # aiohttp types _server as a Server or None; it is bound here
        try:
            body = await fetch_body(f"https://127.0.0.1:{port}/sub?token={TOKEN}")
            with pytest.raises(FetchError) as denied:
                await fetch_body(f"https://127.0.0.1:{port}/sub?token=wrong")
            monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent")
            with pytest.raises(FetchError) as untrusted:
                await fetch_body(f"https://127.0.0.1:{port}/sub?token={TOKEN}")
        finally:
            await runner.cleanup()
        return body, str(denied.value), str(untrusted.value)

    body, denied, untrusted = asyncio.run(scenario())
    assert body == BODY and denied == "HTTP 403 Forbidden"
    assert "certificate" in untrusted.lower() and TOKEN not in untrusted

def test_a_reload_gives_the_new_tables_groups_the_fetched_nodes(tmp_path: Path) -> None:
    """A reload builds a new outbound table from the new build: its filtered groups start with
    the compile-time nodes only, and `follow` gives them what the subscription fetched (no new
    fetch), with the new build's filters."""
    m = manifest(tmp_path)

    async def scenario() -> tuple[list[str], list[str], int]:
        table = OutboundTable.from_manifest(m)
        source = Source()
        mgr = SubscriptionManager(m, table.groups(), tmp_path / "store", fetch=source)
        await mgr.start()
        fetched = source.calls
        new_table = OutboundTable.from_manifest(m)
        mgr.follow(m, new_table.groups())
        groups = {g.name: [n.name for n in g.nodes] for g in new_table.groups()}
        await mgr.close()
        for g in table.groups() + new_table.groups():
            await g.close()
        return groups["hk"], groups["all"], source.calls - fetched

    hk, every, fetches = asyncio.run(scenario())
    assert hk == ["hk1", "hk2"] and every == ["mine", "hk1", "hk2", "us1"] and fetches == 0


def test_a_reload_that_changes_the_subscriptions_needs_a_restart(tmp_path: Path) -> None:
    from dataclasses import replace

    from dae_py.runtime import reload

    m = manifest(tmp_path)
    assert reload.restart_reasons(m, m) == []
    assert any("subscriptions changed" in r for r in reload.restart_reasons(m, replace(m, subscriptions=())))
