"""In the lab: an HTTPS server in the upstream namespace (test CA) serves a base64 subscription
listing a danted node; the gateway fetches it at start and a proxied flow goes through that
node. Restarted with the source unreachable, then serving a broken body, the gateway still
routes through the node from its stored copy (0600); the URL's token is never logged."""
from __future__ import annotations

import base64
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.runtime.helpers import Lab, client_get, flow_lines, gateway, lab_config, runtime_lab

pytestmark = pytest.mark.root

TOKEN = "L4bT0ken"
SERVER = """
import http.server, ssl, sys
body_path, cert, key, host = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = open(body_path, 'rb').read()
        self.send_response(200 if self.path.endswith('token=TOKEN') else 403)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer((host, 8443), H)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print('ready', flush=True)
srv.serve_forever()
""".replace("TOKEN", TOKEN)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_http_peer(8081)
        lab.start_danted(1080)
        yield lab


def serve(lab: Lab, tmp: Path, body: bytes, ca: trustme.CA) -> subprocess.Popen[bytes]:
    cert = ca.issue_cert(lab.topo.upstream_ip4)
    cert.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp / "key.pem"))
    (tmp / "body").write_bytes(body)
    (tmp / "server.py").write_text(SERVER)
    proc = lab.popen("upstream", [sys.executable, str(tmp / "server.py"), str(tmp / "body"), str(tmp / "cert.pem"),
                                  str(tmp / "key.pem"), lab.topo.upstream_ip4], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def node_of(log_text: str, client_port: int) -> str:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for f in flow_lines(log_text):
            if f.src.endswith(f":{client_port}"):
                return f.node
        time.sleep(0.05)
    raise AssertionError(f"no relay line for client port {client_port}")


def test_a_subscription_node_carries_flows_and_survives_an_unreachable_or_broken_source(
        lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = lab.topo
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    store = tmp_path / "store"
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    monkeypatch.setenv("DAE_SUBSCRIPTION_DIR", str(store))
    body = base64.b64encode(f"socks5://{t.upstream_ip4}:1080#sub-dante\n".encode())
    cfg = lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(8081) -> proxy"],
                     nodes={"unused": f"socks5://{t.upstream_ip4}:1099"},
                     groups={"proxy": "{policy: min_moving_avg, filter: 'subtag(prov)'}"})
    cfg = cfg.replace("groups:", f"subscriptions:\n  prov: 'https://{t.upstream_ip4}:8443/sub?token={TOKEN}'\ngroups:")
    server = serve(lab, tmp_path, body, ca)
    logs = []
    try:
        for i, step in enumerate(["fetched", "unreachable", "broken"]):
            if step == "unreachable":
                server.kill()
                server.wait()
            if step == "broken":
                server = serve(lab, tmp_path, b"<html>502 Bad Gateway</html>", ca)
            with gateway(lab, cfg, tmp_path / f"gw{i}") as gw:
                got = client_get(lab, t.upstream_ip4, 8081)
                assert got["peer"] == t.upstream_ip4
                assert node_of(gw.log_text(), got["client_port"]) == "sub-dante", gw.log_text()
                logs.append(gw.log_text())
    finally:
        server.kill()
        server.wait()
    assert "subscription 'prov' (https://" in logs[0] and "1 node(s) from the fetched body" in logs[0]
    assert "fetch failed: cannot connect" in logs[1] and "keeping the last good copy (1 nodes" in logs[1]
    assert "is not a subscription" in logs[2] and "keeping the last good copy" in logs[2]
    copy = store / "prov.sub"
    assert copy.read_bytes() == body and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert not any(TOKEN in text for text in logs)
