"""The lab's topology: names, addresses, and the routed (not NATed) path through the gateway."""
from __future__ import annotations

import os
import socket
import subprocess

import pytest

from dae_py.runtime.lab import Lab, http_get, netlink_snapshot, parse_udp_echo

pytestmark = pytest.mark.root

FAMILIES = [pytest.param(socket.AF_INET, id="v4"), pytest.param(socket.AF_INET6, id="v6")]


def _ips(lab: Lab, family: int) -> tuple[str, str]:
    t = lab.topo
    if family == socket.AF_INET:
        return t.client_ip4, t.upstream_ip4
    return t.client_ip6, t.upstream_ip6


def test_names_are_unique_and_carry_the_pid(lab: Lab) -> None:
    t = lab.topo
    assert t.run_id.startswith(f"daelab-{os.getpid()}-")
    names = [t.client_ns, t.gateway_ns, t.upstream_ns]
    assert len(set(names)) == 3 and all(n.startswith(t.run_id) for n in names)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(n in listed for n in names)
    with Lab() as other:  # a second lab alongside: same addresses, other namespaces
        assert other.run_id != lab.run_id
        assert other.topo.upstream_ip4 == lab.topo.upstream_ip4


def test_interfaces_and_forwarding(lab: Lab) -> None:
    t = lab.topo
    gw = lab.run("gateway", ["ip", "-br", "addr"], check=True).stdout
    assert f"{t.gateway_lan_if}" in gw and f"{t.gateway_lan_ip4}/24" in gw
    assert f"{t.gateway_wan_ip6}/64" in gw
    up = lab.run("upstream", ["ip", "-br", "link"], check=True).stdout
    assert t.upstream_if in up and t.upstream_mac in up
    assert lab.sysctl("gateway", "net.ipv4.ip_forward") == "1"
    assert lab.sysctl("gateway", "net.ipv6.conf.all.forwarding") == "1"
    assert lab.sysctl("client", "net.ipv4.ip_forward") == "0"
    # Nothing of the lab appears in the root namespace.
    root_links = netlink_snapshot(None)["links"]
    macs = {t.client_mac, t.gateway_lan_mac, t.gateway_wan_mac, t.upstream_mac}
    assert not [link for link in root_links if link["address"] in macs]


def test_routes(lab: Lab) -> None:
    t = lab.topo
    client = lab.run("client", ["ip", "-4", "route"], check=True).stdout
    assert f"default via {t.gateway_lan_ip4}" in client
    client6 = lab.run("client", ["ip", "-6", "route"], check=True).stdout
    assert f"default via {t.gateway_lan_ip6}" in client6
    upstream = lab.run("upstream", ["ip", "-4", "route"], check=True).stdout
    assert f"{t.lan_net4} via {t.gateway_wan_ip4}" in upstream
    assert "default" not in upstream  # the upstream only knows the way back to the LAN
    upstream6 = lab.run("upstream", ["ip", "-6", "route"], check=True).stdout
    assert f"{t.lan_net6} via {t.gateway_wan_ip6}" in upstream6


@pytest.mark.parametrize("family", FAMILIES)
def test_client_reaches_http_peer_routed(lab: Lab, family: int) -> None:
    client_ip, upstream_ip = _ips(lab, family)
    with lab.socket("client", family) as s:
        s.settimeout(5)
        s.connect((upstream_ip, 8080))
        body = http_get(s, upstream_ip)
    # Routed, not NATed: the upstream sees the client's own address.
    assert body["peer"] == client_ip
    assert body["local"] == upstream_ip and body["local_port"] == 8080


@pytest.mark.parametrize("family", FAMILIES)
def test_udp_echo(lab: Lab, family: int) -> None:
    client_ip, upstream_ip = _ips(lab, family)
    with lab.socket("client", family, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(b"ping \x00\xff", (upstream_ip, 9000))
        reply, src = s.recvfrom(2048)
        local_port = s.getsockname()[1]
    ip, port, payload = parse_udp_echo(reply)
    assert src[0] == upstream_ip
    assert (ip, port) == (client_ip, local_port)
    assert payload == b"ping \x00\xff"


def test_http_peer_bytes(lab: Lab) -> None:
    """/bytes/N streams N bytes (throughput tests use it)."""
    t = lab.topo
    with lab.socket("client") as s:
        s.settimeout(5)
        s.connect((t.upstream_ip4, 8080))
        s.sendall(b"GET /bytes/1000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    assert b"200 OK" in head and len(body) == 1_000_000


def test_run_popen_and_timeouts(lab: Lab) -> None:
    res = lab.run("client", ["sh", "-c", "echo $$; cat /proc/self/net/dev"], check=True)
    assert "eth0" in res.stdout
    with pytest.raises(subprocess.TimeoutExpired):
        lab.run("client", ["sleep", "30"], timeout=0.3)
    proc = lab.popen("client", ["sleep", "30"])
    assert proc.pid in lab.procs.pids
    lab.procs.kill(proc)
    assert proc.poll() is not None and proc.pid not in lab.procs.pids
