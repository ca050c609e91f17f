"""The controller's API against a real build (compiled here) and a relay that is not started:
mihomo's shapes, the secret, pinning, /configs, /metrics. No root needed; the lab test
(test_controller_lab.py) drives the same API against a running gateway with real traffic."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dae_py.runtime.build import Build
from dae_py.runtime.controller.app import Controller, parse_address
from dae_py.runtime.controller.view import GatewayView
from dae_py.runtime.groups import Group
from dae_py.runtime.groups.stats import Check
from dae_py.runtime.lab.gateway_proc import compile_build
from dae_py.runtime.relay import Gateway, StaticRouter

SECRET = "top-secret-1"
CONFIG = f"""\
global:
  lan_interface: [eth0]
  tcp_check_url: ['http://192.0.2.1:8080/']
  udp_check_dns: ['192.0.2.1:53']
  external_controller: '127.0.0.1:0'
  secret: '{SECRET}'
nodes:
  a: 'socks5://192.0.2.1:1080'
  b: 'socks5://192.0.2.2:1080'
groups:
  proxy: {{policy: min_moving_avg}}
routing:
  rules:
    - "dip(192.0.2.0/24) && dport(8081) -> proxy"
    - "domain(suffix: example.com) -> proxy"
    - "dport(8084) -> block"
  fallback: direct
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    root = tmp_path_factory.mktemp("ctl")
    (root / "config.yaml").write_text(CONFIG)
    compile_build(root / "config.yaml", root / "build")
    return Build.open(root / "build")


@pytest.fixture
def view(build: Build) -> Iterator[GatewayView]:
    relay = Gateway.from_manifest(StaticRouter(0), build.manifest)
    yield GatewayView(build, relay)


Client = Callable[..., Awaitable[tuple[int, Any]]]


@asynccontextmanager
async def serving(v: GatewayView, secret: str | None = SECRET) -> AsyncIterator[tuple[Controller, str]]:
    ctl = Controller(v, secret)
    bound = await ctl.start(("127.0.0.1", 0))
    assert bound is not None
    host, port = bound
    try:
        yield ctl, f"http://{host}:{port}"
    finally:
        await ctl.close()


async def call(session: aiohttp.ClientSession, base: str, method: str, path: str, secret: str | None = SECRET,
               **kw: Any) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {secret}"} if secret is not None else {}
    async with session.request(method, base + path, headers=headers, **kw) as resp:
        body = await resp.read()
        if resp.content_type == "application/json" and body:
            return resp.status, json.loads(body)
        return resp.status, body.decode()


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coro)


def the_group(v: GatewayView) -> Group:
    group = v.group("proxy")
    assert group is not None
    return group


def chosen(group: Group) -> str:
    """The node the group's next TCP flow takes."""
    node = group.select(Check.TCP)
    assert node is not None
    return node.name


def test_parse_address_takes_mihomo_forms() -> None:
    assert parse_address("127.0.0.1:9090") == ("127.0.0.1", 9090)
    assert parse_address("[::1]:9090") == ("::1", 9090)
    assert parse_address(":9090") == ("0.0.0.0", 9090)
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_address("9090")


def test_a_wrong_or_missing_secret_gets_401_and_nothing_else(view: GatewayView) -> None:
    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            for path in ("/version", "/proxies", "/connections", "/metrics", "/dae/summary", "/no/such/path"):
                for secret in (None, "wrong", SECRET + "x", ""):
                    status, body = await call(s, base, "GET", path, secret)
                    assert (status, body) == (401, {"message": "Unauthorized"}), (path, secret)
            status, body = await call(s, base, "PUT", "/proxies/proxy", "wrong", json={"name": "b"})
            assert status == 401 and the_group(view).pinned is None
            async with s.get(base + "/version", headers={"Authorization": f"Basic {SECRET}"}) as resp:
                assert resp.status == 401
            # ?token= counts only on a websocket upgrade (browsers cannot set its headers)
            async with s.get(base + f"/version?token={SECRET}") as resp:
                assert resp.status == 401
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await s.ws_connect(base + "/traffic?token=wrong")
            assert err.value.status == 401
            ws = await s.ws_connect(base + f"/memory?token={SECRET}")
            msg = await ws.receive(timeout=5)
            assert json.loads(msg.data) == {"inuse": 0, "oslimit": 0}
            await ws.close()
            status, body = await call(s, base, "GET", "/version")
            assert status == 200 and body["version"].startswith("dae-py")
    run(go())


def test_the_secret_stays_out_of_reprs_and_logs(view: GatewayView, caplog: pytest.LogCaptureFixture) -> None:
    assert SECRET not in repr(view.manifest.settings)

    async def go() -> None:
        with caplog.at_level(logging.DEBUG):
            async with serving(view) as (ctl, base), aiohttp.ClientSession() as s:
                assert SECRET not in repr(ctl)
                ws = await s.ws_connect(base + f"/traffic?token={SECRET}")
                await ws.close()
                await call(s, base, "GET", "/version")
    run(go())
    assert caplog.records and SECRET not in caplog.text


def test_proxies_show_groups_nodes_and_builtins_in_mihomo_shapes(view: GatewayView) -> None:
    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            status, body = await call(s, base, "GET", "/proxies")
            assert status == 200
            proxies = body["proxies"]
            assert set(proxies) == {"DIRECT", "REJECT", "a", "b", "proxy"}
            group = proxies["proxy"]
            assert group["type"] == "Selector" and group["all"] == ["a", "b"] and group["now"] == "a"
            assert group["dae-policy"] == "min_moving_avg" and group["testUrl"] == "http://192.0.2.1:8080/"
            assert proxies["a"]["type"] == "Socks5" and proxies["a"]["history"] == []
            assert proxies["DIRECT"]["type"] == "Direct" and proxies["REJECT"]["type"] == "Reject"
            status, one = await call(s, base, "GET", "/proxies/proxy")
            assert (status, one) == (200, group)
            assert await call(s, base, "GET", "/proxies/nope") == (404, {"message": "Resource not found"})
    run(go())


def test_put_pins_a_node_and_the_group_honours_it_until_unpinned(view: GatewayView) -> None:
    group = view.group("proxy")
    assert group is not None

    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            group.record(group.nodes[0], Check.TCP, 0.005)  # the policy's choice: a, the faster
            group.record(group.nodes[1], Check.TCP, 0.050)
            assert chosen(group) == "a"
            assert await call(s, base, "PUT", "/proxies/proxy", json={"name": "b"}) == (204, "")
            assert chosen(group) == "b"
            _, body = await call(s, base, "GET", "/proxies/proxy")
            assert body["now"] == "b" and body["fixed"] == "b"
            # a pinned node that goes down: flows fall back to the policy's choice
            group.record(group.nodes[1], Check.TCP, None, "dial failed: Connection refused")
            assert chosen(group) == "a"
            group.record(group.nodes[1], Check.TCP, 0.050)
            assert chosen(group) == "b"
            status, body = await call(s, base, "PUT", "/proxies/proxy", json={"name": "zz"})
            assert status == 400 and body["message"].startswith("Selector update error")
            assert await call(s, base, "PUT", "/proxies/a", json={"name": "b"}) == \
                (400, {"message": "Must be a Selector"})
            assert await call(s, base, "PUT", "/proxies/proxy", data=b"{not json") == \
                (400, {"message": "Body invalid"})
            assert await call(s, base, "DELETE", "/proxies/proxy") == (204, "")
            assert group.pinned is None and chosen(group) == "a"
    run(go())


def test_delay_needs_a_timeout_and_reports_a_failed_check(view: GatewayView) -> None:
    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            assert await call(s, base, "GET", "/proxies/a/delay?url=http://192.0.2.1/") == \
                (400, {"message": "Body invalid"})
            assert await call(s, base, "GET", "/proxies/nope/delay?timeout=100") == \
                (404, {"message": "Resource not found"})
            # node a (192.0.2.1, TEST-NET) cannot be reached from here: the test times out (504) or
            # fails at once (503, no route); either way the groups now hold the node down
            status, body = await call(s, base, "GET", "/proxies/a/delay?url=http://192.0.2.1/&timeout=300")
            assert (status, body) in ((504, {"message": "Timeout"}),
                                      (503, {"message": "An error occurred in the delay test"}))
            assert view.node_state("a")[0] is False
    run(go())


def test_rules_list_clash_types_payloads_and_kernel_hits(view: GatewayView) -> None:
    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            status, body = await call(s, base, "GET", "/rules")
            assert status == 200
            rows = [(r["type"], r["payload"], r["proxy"], r["hits"]) for r in body["rules"]]
            assert rows == [("AND", "dip(192.0.2.0/24) && dport(8081)", "proxy", 0),
                            ("DomainSuffix", "domain(suffix: example.com)", "proxy", 0),
                            ("DstPort", "dport(8084)", "block", 0),
                            ("Match", "", "direct", 0)]
            assert body["rules"][0]["where"].startswith("config.yaml:")
    run(go())


def test_configs_get_and_patch_log_level_only(view: GatewayView) -> None:
    root = logging.getLogger()
    before = root.level

    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            status, body = await call(s, base, "GET", "/configs")
            assert status == 200 and body["tproxy-port"] == 12345 and body["mode"] == "rule"
            assert await call(s, base, "PATCH", "/configs", json={"log-level": "debug"}) == (204, "")
            assert root.level == logging.DEBUG
            _, body = await call(s, base, "GET", "/configs")
            assert body["log-level"] == "debug"
            status, body = await call(s, base, "PATCH", "/configs", json={"mode": "global", "log-level": "error"})
            assert status == 400 and "mode" in body["message"] and root.level == logging.DEBUG
            assert (await call(s, base, "PATCH", "/configs", json={"log-level": "loud"}))[0] == 400
    try:
        run(go())
    finally:
        root.setLevel(before)


def test_connections_delete_closes_the_tracked_flows(view: GatewayView) -> None:
    closed: list[str] = []
    a = view.tracker.open("tcp", ("10.0.0.2", 40000), ("192.0.2.1", 8081), "proxy", "a", " (rule 0 (config.yaml:14))")
    b = view.tracker.open("tcp", ("10.0.0.2", 40001), ("192.0.2.1", 8081), "proxy", "b", " (fallback)")
    view.tracker.bind(a, a, lambda: closed.append("a"))
    view.tracker.bind(b, b, lambda: closed.append("b"))
    up, _down = a.counting(view.relay.stats["proxy"].add_up, view.relay.stats["proxy"].add_down)
    up(100)

    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            _, body = await call(s, base, "GET", "/connections")
            conns = {c["id"]: c for c in body["connections"]}
            assert set(conns) == {a.id, b.id} and body["uploadTotal"] == 100
            c = conns[a.id]
            assert c["upload"] == 100 and c["chains"] == ["a", "proxy"] and c["rule"] == "AND"
            assert c["rulePayload"] == "dip(192.0.2.0/24) && dport(8081)"
            assert c["metadata"]["destinationPort"] == "8081" and c["metadata"]["sourceIP"] == "10.0.0.2"
            assert await call(s, base, "DELETE", f"/connections/{a.id}") == (204, "")
            assert closed == ["a"]
            assert await call(s, base, "DELETE", "/connections") == (204, "")
            assert closed == ["a", "b"] and len(view.tracker) == 0
    run(go())


def test_metrics_parse_as_prometheus_text_with_the_relay_counters(view: GatewayView) -> None:
    c = view.relay.stats["proxy"]
    c.flows, c.active, c.bytes_up, c.bytes_down = 3, 1, 300, 4000
    group = view.group("proxy")
    assert group is not None
    group.report_failure(group.nodes[0], Check.TCP, "dial failed: Connection refused")
    group.record(group.nodes[1], Check.TCP, 0.025)

    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            status, text = await call(s, base, "GET", "/metrics")
            assert status == 200
            samples = {(smp.name, tuple(sorted(smp.labels.items()))): smp.value
                       for fam in text_string_to_metric_families(text) for smp in fam.samples}
            assert samples[("dae_relay_flows_total", (("outbound", "proxy"),))] == 3
            assert samples[("dae_relay_flows_active", (("outbound", "proxy"),))] == 1
            assert samples[("dae_relay_bytes_up_total", (("outbound", "proxy"),))] == 300
            assert samples[("dae_relay_bytes_down_total", (("outbound", "proxy"),))] == 4000
            assert samples[("dae_dial_failures_total", (("cause", "refused"), ("group", "proxy"), ("node", "a")))] == 1
            assert samples[("dae_node_alive", (("check", "tcp"), ("group", "proxy"), ("node", "a")))] == 0
            assert samples[("dae_node_latency_seconds", (("check", "tcp"), ("group", "proxy"), ("node", "b")))] == 0.025
            assert samples[("dae_process_resident_memory_bytes", ())] > 1e6
            assert samples[("dae_process_open_fds", ())] > 3
            # without a loaded object the kernel counters read zero, one sample per outbound / rule
            assert samples[("dae_outbound_packets_total", (("outbound", "proxy"),))] == 0
            hits = [k for k in samples if k[0] == "dae_rule_hits_total"]
            assert len(hits) == 4
    run(go())


def test_the_status_page_is_served_without_the_secret_and_its_data_with_it(view: GatewayView) -> None:
    async def go() -> None:
        async with serving(view) as (_ctl, base), aiohttp.ClientSession() as s:
            for path in ("/ui", "/ui/", "/ui/app.js", "/ui/style.css"):
                status, text = await call(s, base, "GET", path, None)
                assert status == 200 and text, path
            assert "dae/summary" in (await call(s, base, "GET", "/ui/app.js", None))[1]
            assert (await call(s, base, "GET", "/dae/summary", None))[0] == 401
            status, body = await call(s, base, "GET", "/dae/summary")
            assert status == 200 and [g["name"] for g in body["groups"]] == ["proxy"]
            assert [o["name"] for o in body["outbounds"]] == ["direct", "block", "proxy"]
    run(go())


def test_the_state_directory_socket_needs_no_secret_and_is_private(view: GatewayView, tmp_path: Path) -> None:
    sock = tmp_path / "state" / "controller.sock"

    async def go() -> None:
        ctl = Controller(view, SECRET)
        bound = await ctl.start(("127.0.0.1", 0), unix=sock)
        assert bound is not None
        try:
            assert sock.stat().st_mode & 0o777 == 0o600
            async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as s, \
                    s.get("http://gateway/dae/summary") as r:
                assert r.status == 200 and (await r.json())["groups"][0]["name"] == "proxy"
            async with aiohttp.ClientSession() as s:  # the TCP listener still wants the secret
                assert (await call(s, f"http://{bound[0]}:{bound[1]}", "GET", "/dae/summary", None))[0] == 401
        finally:
            await ctl.close()
        assert not sock.exists()
    run(go())


def test_status_renders_the_summary_as_text(view: GatewayView) -> None:
    from dae_py.runtime.controller.general import summary
    from dae_py.runtime.controller.status import render

    view.relay.stats["proxy"].flows = 2
    text = render(summary(view))
    lines = text.splitlines()
    assert lines[0].startswith("dae-py ") and "config.yaml" in lines[0]
    assert any(line.split()[:5] == ["proxy", "group", "0", "0", "B"] for line in lines)  # kernel zero, 2 flows
    assert any("proxy (min_moving_avg): new flows via a" in line for line in lines)
    assert any(line.split()[:2] == ["0", "dip(192.0.2.0/24)"] for line in lines)
    assert "connections: 0 active, 0 since start" in text


def test_metrics_export_the_dns_modules_cache_counters(view: GatewayView) -> None:
    """The real DNS module against a loopback upstream (tests/dnsmodule's): a query asked twice is
    one miss, then one hit, both answered."""
    from dae_py.runtime.controller.collector import GatewayCollector
    from tests.dnsmodule.fakes import FakeUpstream
    from tests.dnsmodule.harness import ZONE, ask, config, with_module

    async def go() -> dict[str, float]:
        up = await FakeUpstream(ZONE).start()
        try:
            async def body(mod: Any, _bindings: Any) -> dict[str, float]:
                view.dns = mod
                await ask(mod, "a.proxied.test")
                await ask(mod, "a.proxied.test")
                return {f"{s.name}{s.labels.get('outcome', '')}{s.labels.get('upstream', '')}": s.value
                        for fam in GatewayCollector(lambda: view).collect() for s in fam.samples}
            result: dict[str, float] = await with_module(config({"main": ("udp", up.port)}), body)
            return result
        finally:
            await up.close()
    samples = asyncio.run(go())
    assert samples["dae_dns_cache_misses_total"] == 1 and samples["dae_dns_cache_hits_total"] == 1, samples
    assert samples["dae_dns_answers_totalanswered"] == 2 and samples["dae_dns_answers_totalservfail"] == 0
    # the miss went to the upstream once, answered: one latency sample, no error
    assert samples["dae_dns_upstream_latency_seconds_countmain"] == 1, samples
    assert 0 < samples["dae_dns_upstream_latency_seconds_summain"] < 5
    assert samples["dae_dns_upstream_errors_totalmain"] == 0


# --- bad input: the listener is on the network, so anything may arrive -------------------------


async def exchange(host: str, port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send raw bytes to the controller and read what comes back until it closes (or 5 s)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


def test_garbage_truncated_oversized_and_silent_clients_leave_the_api_working(
        view: GatewayView, caplog: pytest.LogCaptureFixture) -> None:
    """Each kind of bad input gets an HTTP error or a closed connection, never a traceback, and
    the next well-formed request, and one sent while 100 silent clients hold connections open,
    is answered as usual."""
    caplog.set_level(logging.DEBUG)
    auth = f"Authorization: Bearer {SECRET}\r\n".encode()

    async def go() -> None:
        async with serving(view) as (_, base), aiohttp.ClientSession() as s:
            host, port = base.removeprefix("http://").rsplit(":", 1)
            p = int(port)
            tls_hello = bytes.fromhex("16030100a5010000a10303") + bytes(range(256)) * 4
            for garbage in (tls_hello, b"\x00\xff" * 3000, b"\r\n" * 10 + b"GET"):
                answer = await exchange(host, p, garbage)  # aiohttp answers 400 or just closes
                assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:80]
            # a request cut off in its headers: the server waits for more, then sees EOF
            assert b"200 OK" not in await exchange(host, p, b"GET /version HTTP/1.1\r\nHost: x\r\n")
            huge_header = b"GET /version HTTP/1.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
            answer = await exchange(host, p, huge_header)  # 400 or 431, or closed mid-send
            assert answer == b"" or answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:80]
            body = b'{"name": "' + b"a" * (1 << 20) + b'"}'
            big_put = (b"PUT /proxies/proxy HTTP/1.1\r\nHost: x\r\n" + auth
                       + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            assert (await exchange(host, p, big_put)).startswith(b"HTTP/1.1 413")
            for bad in (b"{not json", b"[]", b'{"name": 5}', b'{"name": "no-such-node"}'):
                status, _ = await call(s, base, "PUT", "/proxies/proxy", data=bad)
                assert status == 400, (bad, status)
            status, _ = await call(s, base, "PATCH", "/configs", data=b"\xff\xfe")
            assert status == 400
            silent = [await asyncio.open_connection(host, p) for _ in range(100)]
            try:
                status, version = await asyncio.wait_for(call(s, base, "GET", "/version"), 5.0)
                assert status == 200 and "version" in version
            finally:
                for _, w in silent:
                    w.close()
            assert (await call(s, base, "GET", "/proxies/proxy"))[0] == 200
    run(go())
    # aiohttp logs each malformed request at DEBUG with its parser error; nothing of ours fails
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not failed, [r.getMessage() for r in failed]
    assert not [r for r in caplog.records if "aaaa" in r.getMessage()]  # the bytes are not copied
    assert any("malformed request refused (LineTooLong)" in r.getMessage() for r in caplog.records)
