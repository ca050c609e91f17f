"""/providers/proxies and the subscriptions in /dae/summary and `dae-runtime status`: a build
with an https:// subscription (fetched by a fake fetcher) and a file:// one, served by the real
controller; the Clash API client from PyPI (clash-controller-api) sees the providers; an update
that fails answers 503 without the URL's token and keeps the nodes. No root needed."""
from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dae_py.runtime.build import Build
from dae_py.runtime.controller.status import render
from dae_py.runtime.controller.view import GatewayView
from dae_py.runtime.lab.gateway_proc import compile_build
from dae_py.runtime.relay import Gateway, StaticRouter
from dae_py.runtime.subscriptions import SubscriptionManager
from dae_py.runtime.subscriptions.fetch import FetchError, fetch_body
from tests.controller.test_api import SECRET, call, serving

TOKEN = "pr0viderT0ken"
URL = f"https://sub.example/api/v1/client/subscribe?token={TOKEN}"


def body(*names: str) -> bytes:
    return base64.b64encode("\n".join(f"socks5://127.0.0.1:9/#{n}" for n in names).encode())


class Source:
    def __init__(self) -> None:
        self.body: bytes = body("hk1", "hk2")
        self.error: str | None = None
        self.calls = 0

    async def __call__(self, url: str, so_mark: int) -> bytes:
        if url.startswith("file:"):
            return await fetch_body(url)
        self.calls += 1
        if self.error:
            raise FetchError(self.error)
        return self.body


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    root = tmp_path_factory.mktemp("prov")
    (root / "local.txt").write_text("socks5://127.0.0.1:9/#us1\n")
    (root / "config.yaml").write_text(
        "global:\n  lan_interface: [eth0]\n  tcp_check_url: ['http://127.0.0.1:9/']\n"
        f"  external_controller: '127.0.0.1:0'\n  secret: '{SECRET}'\n"
        f"subscriptions:\n  remote: {{url: '{URL}', interval: 2h}}\n  local: 'file://local.txt'\n"
        "groups:\n  all: {filter: 'subtag(remote, local)', policy: min_moving_avg}\n"
        "routing:\n  rules: ['dport(443) -> all']\n  fallback: direct\n")
    compile_build(root / "config.yaml", root / "build")
    return Build.open(root / "build")


async def with_view(build: Build, tmp_path: Path, source: Source) -> tuple[GatewayView, SubscriptionManager]:
    relay = Gateway.from_manifest(StaticRouter(0), build.manifest)
    subs = SubscriptionManager(build.manifest, relay.table.groups(), tmp_path / "store", fetch=source)
    await subs.start()
    return GatewayView(build, relay, subscriptions=subs), subs


def test_providers_list_update_and_fail_as_mihomo_shapes_them(build: Build, tmp_path: Path) -> None:
    source = Source()

    async def go() -> dict[str, Any]:
        v, subs = await with_view(build, tmp_path, source)
        out: dict[str, Any] = {}
        try:
            async with serving(v) as (_ctl, base), aiohttp.ClientSession() as s:
                out["list"] = await call(s, base, "GET", "/providers/proxies")
                out["one"] = await call(s, base, "GET", "/providers/proxies/remote")
                out["unknown"] = await call(s, base, "GET", "/providers/proxies/nope")
                out["no-secret"] = await call(s, base, "PUT", "/providers/proxies/remote", None)
                source.body = body("hk1", "hk3", "jp1")
                out["update"] = await call(s, base, "PUT", "/providers/proxies/remote")
                out["after"] = await call(s, base, "GET", "/providers/proxies/remote")
                source.error = f"cannot connect: refused ({URL})".replace(URL, "https://sub.example/***")
                out["failed"] = await call(s, base, "PUT", "/providers/proxies/remote")
                out["kept"] = await call(s, base, "GET", "/providers/proxies/remote")
                out["check"] = await call(s, base, "GET", "/providers/proxies/local/healthcheck")
                out["summary"] = await call(s, base, "GET", "/dae/summary")
                out["group"] = await call(s, base, "GET", "/proxies/all")
                out["calls"] = source.calls
        finally:
            await subs.close()
        return out

    out = asyncio.run(go())
    status, listed = out["list"]
    assert status == 200 and set(listed["providers"]) == {"remote", "local"}
    remote = listed["providers"]["remote"]
    assert remote["type"] == "Proxy" and remote["vehicleType"] == "HTTP" and remote["dae-refresh-s"] == 7200.0
    assert [p["name"] for p in remote["proxies"]] == ["hk1", "hk2"]
    assert remote["proxies"][0]["type"] == "Socks5" and remote["updatedAt"].endswith("Z")
    assert listed["providers"]["local"]["vehicleType"] == "File"
    assert [p["name"] for p in listed["providers"]["local"]["proxies"]] == ["us1"]
    assert out["one"] == (200, remote)
    assert out["unknown"][0] == 404 and out["no-secret"][0] == 401
    assert out["update"][0] == 204 and out["calls"] == 3  # start, update, failed update
    assert [p["name"] for p in out["after"][1]["proxies"]] == ["hk1", "hk3", "jp1"]
    status, failed = out["failed"]
    assert status == 503 and "cannot connect" in failed["message"] and TOKEN not in str(failed)
    assert [p["name"] for p in out["kept"][1]["proxies"]] == ["hk1", "hk3", "jp1"]
    assert out["kept"][1]["dae-error"].startswith("cannot connect")
    assert out["check"][0] == 204
    assert set(out["group"][1]["all"]) == {"hk1", "hk3", "jp1", "us1"}
    summary = out["summary"][1]
    rows = {u["name"]: u for u in summary["subscriptions"]}
    assert rows["remote"]["nodes"] == 3 and rows["remote"]["refresh_s"] == 7200.0
    assert rows["remote"]["error"].startswith("cannot connect") and rows["local"]["updated"].endswith("Z")
    text = render(summary)
    assert "subscriptions:" in text and "7200 s" in text and "3600 s" in text
    assert TOKEN not in text and TOKEN not in str(summary)


def test_the_healthcheck_records_each_nodes_result_in_its_groups(build: Build, tmp_path: Path) -> None:
    async def go() -> tuple[int, list[tuple[str, bool, bool, str | None]]]:
        v, subs = await with_view(build, tmp_path, Source())
        try:
            async with serving(v) as (_ctl, base), aiohttp.ClientSession() as s:
                status, _ = await call(s, base, "GET", "/providers/proxies/remote/healthcheck")
            group = v.group("all")
            assert group is not None
            from dae_py.runtime.groups.stats import Check

            return status, [(n.name, group.stats[Check.TCP][n.name].checked, group.stats[Check.TCP][n.name].alive,
                             group.stats[Check.TCP][n.name].last_error) for n in group.nodes]
        finally:
            await subs.close()

    status, stats = asyncio.run(go())
    assert status == 204
    by_name = {name: (checked, alive, err) for name, checked, alive, err in stats}
    for name in ("hk1", "hk2"):  # port 9 on loopback refuses: checked, and down with the reason
        checked, alive, err = by_name[name]
        assert checked and not alive and err and "health check failed" in err, by_name


def test_the_clash_api_client_sees_the_providers(build: Build, tmp_path: Path) -> None:
    from clash_controller_api import ClashAPI

    async def go() -> dict[str, bool]:
        v, subs = await with_view(build, tmp_path, Source())
        try:
            async with serving(v) as (_ctl, base), aiohttp.ClientSession() as s:
                api = ClashAPI(base, SECRET, session=s)
                await api.async_detect_capabilities()
                caps = api.capabilities
                assert caps is not None
                return caps
        finally:
            await subs.close()

    caps = asyncio.run(go())
    assert caps["providers_proxies"] and caps["provider_healthcheck"]
