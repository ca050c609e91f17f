"""Fixtures for the relay tests: the namespace lab with real peers, and a gateway harness."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dae_py.compiler.emit import compile_sockmap
from dae_py.runtime.groups import Group
from dae_py.runtime.relay import FunctionRouter, Gateway, OutboundTable, RelayConfig
from tests.conftest import have_root_bpf

from . import servers
from .lab import RELAY_MARK, SERVER4, SERVER6, TPROXY_PORT, Lab

DANTE4, DANTE6 = "10.77.2.10", "fd77:2::10"
DANTE_AUTH = "10.77.2.11"
TINY, TINY_AUTH = "10.77.2.12", "10.77.2.13"
GARBAGE = "10.77.2.20"  # a fake proxy of the test's own that answers garbage
SILENT = "10.77.2.21"   # a fake proxy that accepts and never answers
DEAD = "10.77.2.22"     # nothing listens there: connection refused
USER, PASSWORD = ("alice", "s3cret")
HTTP_USER, HTTP_PASSWORD = ("bob", "pw-of-bob")


def node(name: str, protocol: str, host: str, port: int, user: str | None = None,
         password: str | None = None) -> dict[str, Any]:
    auth = f"{user}:{password}@" if user else ""
    return {"name": name, "protocol": protocol, "host": host, "port": port, "username": user,
            "password": password, "sni": None, "allow_insecure": False,
            "link": f"{protocol}://{auth}{host}:{port}"}


NODES = [
    node("dante", "socks5", DANTE4, 1080),
    node("dante6", "socks5", DANTE6, 1080),
    node("dante_auth", "socks5", DANTE_AUTH, 1080, USER, PASSWORD),
    node("dante_badpw", "socks5", DANTE_AUTH, 1080, USER, "wrong"),
    node("tiny", "http", TINY, 8888),
    node("tiny_auth", "http", TINY_AUTH, 8888, HTTP_USER, HTTP_PASSWORD),
    node("tiny_badpw", "http", TINY_AUTH, 8888, HTTP_USER, "wrong"),
    node("garbage", "socks5", GARBAGE, 1080),
    node("garbage_http", "http", GARBAGE, 8080),
    node("silent", "socks5", SILENT, 1080),
    node("dead", "socks5", DEAD, 1080),
    node("dead2", "http", DEAD, 8080),
]
CHECK = {"tcp_check_url": [f"http://{SERVER4}:80/generate_204"], "tcp_check_http_method": "HEAD",
         "udp_check_dns": [f"{SERVER4}:53"], "check_interval_s": 30.0,
         "check_tolerance_ms": 50.0}


def single_node_groups() -> list[dict[str, Any]]:
    """Group `g_<node>` (ids from 10) holding just that node: lets a router pick a node."""
    return [{"name": f"g_{n['name']}", "id": 10 + i, "policy": "fixed", "fixed_index": 0,
             "nodes": [n["name"]], "check": CHECK} for i, n in enumerate(NODES)]


def group_of(table: OutboundTable, outbound_id: int) -> Group:
    """The group behind `outbound_id`, for tests that look at its state."""
    group = table.get(outbound_id)
    assert isinstance(group, Group), f"outbound {outbound_id} is {group!r}, not a group"
    return group


def group_id(node_name: str) -> int:
    return 10 + [n["name"] for n in NODES].index(node_name)


def manifest(extra_groups: Sequence[dict[str, Any]] = (), extra_nodes: Sequence[dict[str, Any]] = ()
             ) -> dict[str, Any]:
    return {"nodes": NODES + list(extra_nodes), "groups": single_node_groups() + list(extra_groups)}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    lab = Lab().up_()
    try:
        lab.danted(DANTE4, DANTE6)
        lab.danted(DANTE_AUTH, user=(USER, PASSWORD))
        lab.tinyproxy(TINY)
        lab.tinyproxy(TINY_AUTH, user=(HTTP_USER, HTTP_PASSWORD))
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def sockmap_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding sockmap.o, as a build holds it (RelayConfig.sockmap_object)."""
    build = tmp_path_factory.mktemp("sockmap-build")
    compile_sockmap(build)
    return build


@dataclass
class Env:
    lab: Lab
    gateway: Gateway
    routes: dict[int, int] = field(default_factory=dict)  # client source port -> outbound id
    default: int = 0

    def route(self, outbound_id: int) -> None:
        self.default = outbound_id

    def client(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM,
               outbound_id: int | None = None) -> socket.socket:
        """A socket in the client namespace; with `outbound_id`, flows from it go there."""
        sock = self.lab.socket(self.lab.client, family, kind)
        if outbound_id is not None:
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self.routes[sock.getsockname()[1]] = outbound_id
        return sock


@contextlib.asynccontextmanager
async def gateway_env(lab: Lab, manifest_: dict[str, Any], config: RelayConfig | None = None,
                      health_checks: bool = False) -> AsyncIterator[Env]:
    """Servers in the upstream namespace, and a gateway on the tproxy port."""
    config = config or RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3)
    env_box: dict[str, Env] = {}

    def decide(flow: Any) -> int:
        env = env_box["env"]
        return env.routes.get(flow.src[1], env.default)

    gateway = Gateway.from_manifest(FunctionRouter(decide), manifest_, config)
    env = env_box["env"] = Env(lab, gateway)
    closers: list[Any] = []
    up = lab.up
    try:
        for host in (SERVER4, SERVER6):
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            for port, handler in ((7000, servers.whoami), (80, servers.http_204),
                                  (53, servers.dns_tcp)):
                srv = await servers.tcp_server(lab.socket(up, fam, socket.SOCK_STREAM), host,
                                               port, handler)
                closers.append(srv.close)
            for port in (7001, 7002):
                echo = await servers.udp_server(lab.socket(up, fam, socket.SOCK_DGRAM), host,
                                                port, servers.udp_echo)
                assert echo.transport is not None  # connection_made ran
                closers.append(echo.transport.close)
            dns_udp = await servers.udp_server(lab.socket(up, fam, socket.SOCK_DGRAM), host, 53,
                                               lambda data, addr: servers.dns_answer(data))
            assert dns_udp.transport is not None
            closers.append(dns_udp.transport.close)
        await gateway.start(TPROXY_PORT, health_checks=health_checks)
        yield env
    finally:
        await gateway.close()
        for close in closers:
            close()
        await asyncio.sleep(0)


def tcp_pair(backlog: int = 128) -> tuple[socket.socket, socket.socket]:
    """A connected non-blocking loopback TCP pair (the two ends a relay joins)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(backlog)
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    a.setblocking(False)
    b.setblocking(False)
    return a, b
