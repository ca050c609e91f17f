"""The controller of a running gateway in the lab, driven from the client namespace.

The real `dae-runtime` (compiled BPF attached to the lab's LAN, danted nodes in upstream) with
`global.external_controller` on the gateway's LAN address. The tests send traffic they count
themselves and check that /metrics (parsed by prometheus_client), /connections, /traffic and
/logs report it; they pin nodes and close connections through the API and watch the flows obey;
and they drive tools nobody here wrote: the `clash-controller-api` client, the `clashctl` TUI
(in tmux, its screen captured) and the status page in headless Chromium (DOM and screenshot).
Artefacts (screens, screenshot, the DOM) go to $DAE_ARTEFACTS or a pytest temporary folder.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime.helpers import Gw, Lab, flow_lines, gateway, lab_config, runtime_lab, udp_exchange, wait_for

pytestmark = pytest.mark.root

SECRET = "lab-secret-7f3a"
PORT = 9090
T = TypeVar("T")


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_danted(1081)
        lab.start_http_peer(8081)
        lab.start_udp_echo(9001)
        yield lab


@pytest.fixture(scope="module", params=["splice", "sockmap"])
def gw(request: pytest.FixtureRequest, lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    """The gateway under test, once per relay mode: the counts the controller reports come from
    the relay's own copies (splice, the default) or from the sockmap program's counters."""
    t = lab.topo
    cfg = lab_config(t, rules=[f"dip({t.upstream_ip4}) && dport(8081) -> proxy", "dport(8084) -> block",
                               "l4proto(udp) && dport(9001) -> proxy"],
                     nodes={"dante1": f"socks5://{t.upstream_ip4}:1080", "dante2": f"socks5://{t.upstream_ip4}:1081"},
                     extra_global=f"  external_controller: '{t.gateway_lan_ip4}:{PORT}'\n  secret: '{SECRET}'\n"
                                  f"  relay_mode: {request.param}")
    with gateway(lab, cfg, tmp_path_factory.mktemp("gw")) as gw:
        gw.wait_log(r"controller listening on", timeout=10)
        assert "plain TCP flows are spliced instead" not in gw.log_text()  # sockmap loaded when asked for
        yield gw
    assert SECRET not in gw.log_text()  # never logged, start to exit


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(os.environ.get("DAE_ARTEFACTS") or tmp_path_factory.mktemp("artefacts")) / "controller"
    path.mkdir(parents=True, exist_ok=True)
    return path


def base(lab: Lab) -> str:
    return f"http://{lab.topo.gateway_lan_ip4}:{PORT}"


def in_client(lab: Lab, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine in a thread inside the client namespace (its sockets are made there)."""
    return lab.call_in("client", lambda: asyncio.run(make()))


AUTH = {"Authorization": f"Bearer {SECRET}"}


def api(lab: Lab, method: str, path: str, **kw: Any) -> tuple[int, Any]:
    async def go() -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.request(method, base(lab) + path, headers=AUTH, **kw) as r:
            body = await r.read()
            return r.status, (json.loads(body) if r.content_type == "application/json" and body else body.decode())
    return in_client(lab, go)


def metrics(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = api(lab, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def proxied_get(lab: Lab, path: str = "/") -> tuple[int, int, int]:
    """GET through the proxied rule (upstream:8081) from the client: (bytes sent, bytes received,
    the client's source port), counted here, on the socket."""
    t = lab.topo
    with lab.socket("client", socket.AF_INET) as s:
        s.settimeout(10)
        s.connect((t.upstream_ip4, 8081))
        sport = s.getsockname()[1]
        request = f"GET {path} HTTP/1.1\r\nHost: {t.upstream_ip4}\r\nConnection: close\r\n\r\n".encode()
        s.sendall(request)
        received = 0
        while chunk := s.recv(65536):
            received += len(chunk)
    return len(request), received, sport


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


def settled(lab: Lab) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics once the relay carries no flow (every byte of finished flows counted)."""
    return wait_for(lambda: (m := metrics(lab)).get(key("dae_relay_flows_active", outbound="proxy"), 0) == 0 and m,
                    timeout=10)


def test_wrong_or_missing_secret_gets_401_from_the_running_gateway(lab: Lab, gw: Gw) -> None:
    async def go() -> list[tuple[int, bytes]]:
        out = []
        async with aiohttp.ClientSession() as s:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": SECRET}):
                for path in ("/proxies", "/metrics", "/connections"):
                    async with s.get(base(lab) + path, headers=headers) as r:
                        out.append((r.status, await r.read()))
        return out
    assert set(in_client(lab, go)) == {(401, b'{"message": "Unauthorized"}')}


def test_metrics_match_the_traffic_the_test_sent(lab: Lab, gw: Gw) -> None:
    before = settled(lab)
    sent = received = 0
    for _ in range(3):
        s, r, _port = proxied_get(lab)
        sent += s
        received += r
    with lab.socket("client", socket.AF_INET) as blocked:  # one blocked attempt (rule 1)
        blocked.settimeout(1.0)
        with pytest.raises(TimeoutError):
            blocked.connect((lab.topo.upstream_ip4, 8084))
    after = settled(lab)

    def delta(name: str, **labels: str) -> float:
        k = key(name, **labels)
        return after.get(k, 0) - before.get(k, 0)

    assert delta("dae_relay_flows_total", outbound="proxy") == 3
    assert delta("dae_relay_bytes_up_total", outbound="proxy") == sent
    assert delta("dae_relay_bytes_down_total", outbound="proxy") == received
    where0 = next(k for k in after if k[0] == "dae_rule_hits_total" and ("rule", "0") in k[1])
    assert after[where0] - before.get(where0, 0) == 3  # one classification per new flow
    where1 = next(k for k in after if k[0] == "dae_rule_hits_total" and ("rule", "1") in k[1])
    assert after[where1] - before.get(where1, 0) == 1  # the SYN; its retransmissions find the flow
    # per proxied flow the client sends at least SYN, ACK, the request, FIN, last ACK
    assert delta("dae_outbound_packets_total", outbound="proxy") >= 3 * 5
    assert delta("dae_outbound_bytes_total", outbound="proxy") >= sent
    assert delta("dae_outbound_packets_total", outbound="block") >= 1
    assert after[key("dae_node_alive", group="proxy", node="dante1", check="tcp")] == 1
    assert after[key("dae_node_latency_seconds", group="proxy", node="dante1", check="tcp")] > 0
    assert after[key("dae_process_resident_memory_bytes")] > 10e6
    assert after[key("dae_process_open_fds")] > 10


def test_connections_lists_a_live_flow_and_delete_really_closes_it(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    socks = []
    for _ in range(3):
        s = lab.socket("client", socket.AF_INET)
        s.settimeout(5)
        s.connect((t.upstream_ip4, 8081))
        s.sendall(b"GET /")  # an unfinished request: the peer waits, the flow stays open
        socks.append(s)
    try:
        ports = {str(s.getsockname()[1]) for s in socks}

        def listed() -> dict[str, dict[str, Any]]:
            _, body = api(lab, "GET", "/connections")
            return {c["metadata"]["sourcePort"]: c for c in body["connections"] if c["metadata"]["sourcePort"] in ports}
        conns = wait_for(lambda: c if len(c := listed()) == 3 else None, timeout=5)
        one = conns[str(socks[0].getsockname()[1])]
        assert one["metadata"]["destinationIP"] == t.upstream_ip4 and one["metadata"]["destinationPort"] == "8081"
        assert one["metadata"]["network"] == "tcp" and one["chains"][-1] == "proxy"
        assert one["upload"] == 5 and one["rule"] == "AND"
        assert api(lab, "DELETE", f"/connections/{one['id']}") == (204, "")
        assert socks[0].recv(100) == b""  # the client sees its connection end
        assert set(listed()) == ports - {str(socks[0].getsockname()[1])}
        assert api(lab, "DELETE", "/connections") == (204, "")
        for s in socks[1:]:
            assert s.recv(100) == b""
        assert not listed()
    finally:
        for s in socks:
            s.close()


def test_put_pins_the_node_new_flows_take(lab: Lab, gw: Gw) -> None:
    try:
        for node in ("dante2", "dante1", "dante2"):
            assert api(lab, "PUT", "/proxies/proxy", json={"name": node}) == (204, "")
            _, body = api(lab, "GET", "/proxies/proxy")
            assert body["now"] == node
            mark = gw.log_len()
            _, _, sport = proxied_get(lab)
            gw.wait_log(rf":{sport} -> .* via proxy node {node}$", since=mark)
            flows = [f for f in flow_lines(gw.log_text()[mark:]) if f.src.endswith(f":{sport}")]
            assert [f.node for f in flows] == [node]
    finally:
        assert api(lab, "DELETE", "/proxies/proxy") == (204, "")


def test_delay_runs_a_real_check_through_the_node(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    status, body = api(lab, "GET", f"/proxies/dante2/delay?url=http://{t.upstream_ip4}:8080/&timeout=3000")
    assert status == 200 and body["delay"] >= 1
    _, node = api(lab, "GET", "/proxies/dante2")
    assert node["history"][-1]["delay"] == body["delay"] and node["alive"] is True
    # nothing listens on upstream:8099: the node dials, the target refuses: the check fails
    status, body = api(lab, "GET", f"/proxies/dante2/delay?url=http://{t.upstream_ip4}:8099/&timeout=3000")
    assert (status, body) == (503, {"message": "An error occurred in the delay test"})
    # the group's next check brings it back; the test's own check does too
    assert api(lab, "GET", f"/proxies/dante2/delay?url=http://{t.upstream_ip4}:8080/&timeout=3000")[0] == 200


def test_traffic_and_logs_stream_chunked_and_over_websockets(lab: Lab, gw: Gw) -> None:
    size = 3 * 1024 * 1024

    async def go() -> tuple[int, list[str], dict[str, Any]]:
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession() as s:
            logs = await s.ws_connect(base(lab) + f"/logs?level=info&token={SECRET}")
            async with s.get(base(lab) + "/traffic", headers=AUTH) as r:
                assert r.headers.get("Transfer-Encoding") == "chunked"
                await r.content.readline()  # the first second
                transfer = loop.run_in_executor(None, proxied_get, lab, f"/bytes/{size}")
                down = 0
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    line = json.loads(await r.content.readline())
                    assert set(line) == {"up", "down"}
                    down += line["down"]
                    if transfer.done() and down >= size:
                        break
                await transfer
            lines: list[str] = []
            while not any("via proxy" in x for x in lines):
                msg = await logs.receive(timeout=5)
                lines.append(json.loads(msg.data)["payload"])
            await logs.close()
            ws = await s.ws_connect(base(lab) + f"/traffic?token={SECRET}")
            first = json.loads((await ws.receive(timeout=5)).data)
            await ws.close()
        return down, lines, first
    down, lines, first = in_client(lab, go)
    assert down >= size  # the transfer's bytes, as the relay counted them second by second
    assert any("via proxy" in line and "8081" in line for line in lines)
    assert set(first) == {"up", "down"}


def test_configs_patch_log_level(lab: Lab, gw: Gw) -> None:
    _, body = api(lab, "GET", "/configs")
    assert body["log-level"] == "info" and body["tproxy-port"] == 12345
    try:
        assert api(lab, "PATCH", "/configs", json={"log-level": "debug"}) == (204, "")
        assert api(lab, "GET", "/configs")[1]["log-level"] == "debug"
        assert api(lab, "PATCH", "/configs", json={"allow-lan": False})[0] == 400
    finally:
        assert api(lab, "PATCH", "/configs", json={"log-level": "info"}) == (204, "")


def test_clash_controller_api_client_against_the_gateway(lab: Lab, gw: Gw) -> None:
    from clash_controller_api import ClashAPI
    from clash_controller_api.exceptions import APIAuthError

    proxied_get(lab)

    async def go() -> tuple[Any, Any, Any, Any]:
        async with aiohttp.ClientSession() as session:
            bad = ClashAPI(base(lab), "wrong", session=session)
            with pytest.raises(APIAuthError):
                await bad.async_validate_connection()
            api_ = ClashAPI(base(lab), SECRET, session=session)
            await api_.async_validate_connection()
            version = await api_.async_get_version()
            result = await api_.async_fetch_data()
            rules = await api_.async_request("GET", "rules")
            return version, result, rules, api_.capabilities
    version, result, rules, caps = in_client(lab, go)
    assert version.version.startswith("dae-py") and version.meta == "Meta Core"
    assert not result.errors, result.errors
    data = result.data
    assert set(data) >= {"proxies", "connections", "traffic", "configs", "memory"}
    assert data["proxies"]["proxies"]["proxy"]["all"] == ["dante1", "dante2"]
    assert set(data["traffic"]) == {"up", "down"} and data["configs"]["mode"] == "rule"
    assert caps["ws_traffic"] and caps["ws_connections"] and caps["rules"]
    assert rules["rules"][0]["proxy"] == "proxy" and rules["rules"][0]["hits"] >= 1


def test_clashctl_tui_shows_the_gateway(lab: Lab, gw: Gw, artefacts: Path, tmp_path: Path) -> None:
    clashctl = shutil.which("clashctl") or str(Path(sys.executable).with_name("clashctl"))
    assert Path(clashctl).exists(), "clashctl is installed with the test extras"
    cfg = tmp_path / "clashctl.toml"
    cfg.write_text(f'using = "{base(lab)}"\n\n[[servers]]\nname = "gw"\nurl = "{base(lab)}"\nsecret = "{SECRET}"\n')
    sock = tmp_path / "tmux.sock"
    tmux = ["tmux", "-S", str(sock)]
    lab.run("client", [*tmux, "new-session", "-d", "-x", "160", "-y", "40",
                       f"env HOME={tmp_path} TERM=xterm-256color {clashctl} -c {cfg}"],
            check=True, capture_output=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=True).stdout

    try:
        status = wait_for(lambda: s if "dae-py" in (s := screen()) else None, timeout=20)
        (artefacts / "clashctl-status.txt").write_text(status)
        subprocess.run([*tmux, "send-keys", "2"], check=True)
        proxies = wait_for(lambda: s if "Selector" in (s := screen()) else None, timeout=10)
        (artefacts / "clashctl-proxies.txt").write_text(proxies)
        subprocess.run([*tmux, "send-keys", "3"], check=True)
        rules = wait_for(lambda: s if "DstPort" in (s := screen()) else None, timeout=10)
        (artefacts / "clashctl-rules.txt").write_text(rules)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
    assert "Clash Ver." in status and "dae-py" in status
    assert "proxy" in proxies and "Selector" in proxies
    assert "dport(8084)" in rules and "block" in rules and "Match" in rules


def test_status_page_renders_in_headless_chromium(lab: Lab, gw: Gw, artefacts: Path, tmp_path: Path) -> None:
    proxied_get(lab)
    url = f"{base(lab)}/ui/#token={SECRET}"
    common = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000"]
    env = {**os.environ, "HOME": str(tmp_path)}
    with lab.socket("client", socket.AF_INET) as live:  # an active connection for the page to show
        live.settimeout(5)
        live.connect((lab.topo.upstream_ip4, 8081))
        live.sendall(b"GET /")
        live_src = f"{lab.topo.client_ip4}:{live.getsockname()[1]}"
        wait_for(lambda: any(c["src"] == live_src for c in api(lab, "GET", "/dae/summary")[1]["connections"]))
        dom = lab.run("client", [*common, "--dump-dom", url], env=env, timeout=90, check=True).stdout
        (artefacts / "status-page.html").write_text(dom)
        shot = artefacts / "status-page.png"
        lab.run("client", [*common, "--window-size=1280,1500", f"--screenshot={shot}", url], env=env, timeout=90,
                check=True)
    assert shot.exists() and shot.stat().st_size > 10_000
    from html.parser import HTMLParser

    class Tables(HTMLParser):
        """Rows of each table by id, as cell texts."""

        def __init__(self) -> None:
            super().__init__()
            self.tables: dict[str, list[list[str]]] = {}
            self.table: str | None = None
            self.in_body = False
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "table":
                self.table = dict(attrs).get("id")
                self.tables[self.table or ""] = []
            elif tag == "tbody":
                self.in_body = True
            elif tag == "tr" and self.in_body:
                self.tables[self.table or ""].append([])
            elif tag == "td" and self.in_body:
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag == "td" and self.cell is not None:
                self.tables[self.table or ""][-1].append("".join(self.cell))
                self.cell = None
            elif tag == "tbody":
                self.in_body = False

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    p = Tables()
    p.feed(dom)
    outbounds = {row[0]: row for row in p.tables["outbounds"]}
    assert set(outbounds) == {"direct", "block", "proxy"}
    assert int(outbounds["proxy"][4]) >= 1  # relay flows
    nodes = {row[1]: row for row in p.tables["nodes"]}
    assert set(nodes) == {"dante1", "dante2"} and nodes["dante1"][3] == "alive"
    assert nodes["dante1"][4].endswith(" ms")
    rules = p.tables["rules"]
    hits = [int(row[0]) for row in rules]
    assert hits == sorted(hits, reverse=True)  # busiest first (the fallback: the API calls themselves)
    proxied = next(row for row in rules if row[1].startswith(f"dip({lab.topo.upstream_ip4})"))
    assert int(proxied[0]) >= 1 and proxied[2] == "proxy"
    conns = p.tables["connections"]
    assert [row[:3] for row in conns] == [[live_src, f"{lab.topo.upstream_ip4}:8081", "proxy"]]
    assert conns[0][3] in ("dante1", "dante2")  # the policy's choice by latency
    assert conns[0][5] == "5 B"  # "GET /", counted by the relay
    assert 'data-outbound="proxy"' in dom and "<canvas" in dom
    assert 'data-updates="' in dom and 'data-updates="1"' not in dom  # polled more than once


def test_dae_runtime_status_over_the_state_socket_and_the_controller(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    with lab.socket("client", socket.AF_INET) as s:  # one live connection to show
        s.settimeout(5)
        s.connect((t.upstream_ip4, 8081))
        s.sendall(b"GET /")
        sport = s.getsockname()[1]
        wait_for(lambda: any(c["metadata"]["sourcePort"] == str(sport)
                             for c in api(lab, "GET", "/connections")[1]["connections"]))
        cli = [sys.executable, "-m", "dae_py.runtime.cli", "status"]
        local = subprocess.run([*cli, "--state", str(gw.state_path)], capture_output=True, text=True, timeout=30)
        assert local.returncode == 0, local.stderr
        text = local.stdout
        assert text.startswith("dae-py ")
        assert "proxy (min_moving_avg): new flows via dante" in text
        assert any(line.split()[:3] == ["dante1", "socks5", "alive"] for line in text.splitlines())
        assert f"{t.client_ip4}:{sport}" in text and "connections: 1 active" in text
        remote = lab.run("client", [*cli, "--controller", f"{t.gateway_lan_ip4}:{PORT}", "--json"],
                         env={**os.environ, "DAE_CONTROLLER_SECRET": SECRET}, timeout=30)
        assert remote.returncode == 0, remote.stderr
        summary = json.loads(remote.stdout)
        assert [g["name"] for g in summary["groups"]] == ["proxy"]
        assert any(c["src"] == f"{t.client_ip4}:{sport}" for c in summary["connections"])
        denied = lab.run("client", [*cli, "--controller", f"{t.gateway_lan_ip4}:{PORT}"], timeout=30,
                         env={k: v for k, v in os.environ.items() if k != "DAE_CONTROLLER_SECRET"})
        assert denied.returncode == 1 and "wants its secret" in denied.stderr


def test_connections_list_a_udp_association_and_delete_ends_it(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    _peer, _pport, payload, _reply_src, sport = udp_exchange(lab, t.upstream_ip4, 9001, b"udp-through-the-proxy")
    assert payload == b"udp-through-the-proxy"

    def listed() -> list[dict[str, Any]]:
        _, body = api(lab, "GET", "/connections")
        return [c for c in body["connections"] if c["metadata"]["network"] == "udp"
                and c["metadata"]["sourcePort"] == str(sport)]
    conns = wait_for(lambda: c if len(c := listed()) == 1 else None, timeout=5)
    one = conns[0]
    assert one["metadata"]["destinationPort"] == "9001" and one["chains"][-1] == "proxy"
    sent = len(b"udp-through-the-proxy")
    assert one["upload"] >= sent and one["upload"] % sent == 0  # (the helper resends until answered)
    assert one["download"] > 0  # the echo's reply
    assert one["rule"] == "AND" and one["rulePayload"] == "l4proto(udp) && dport(9001)"
    assert api(lab, "DELETE", f"/connections/{one['id']}") == (204, "")
    assert not listed()
