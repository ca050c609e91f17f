"""SIP003 plugins through the gateway against ss-server running the server side of the same
plugins (Debian's simple-obfs: obfs-local/obfs-server in http and tls modes;
shadowsocks-v2ray-plugin: WebSocket, and WebSocket over TLS with a trustme CA). The runtime
starts the client plugin as a subprocess with the SIP003 environment, dials its local port,
restarts it when it dies and stops it with the gateway. TCP rides the plugin; UDP goes straight
to ss-server, as shadowsocks-libev does. The plugins run in the marking cgroup
(tests/proxy/test_plugin_mark.py proves the mark), which goes with the gateway."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from dae_py.compiler.emit import compile_sockmark
from dae_py.runtime.datapath import sockmark
from dae_py.runtime.datapath.cgroup import cgroup2_mount
from dae_py.runtime.proxy import plugins
from dae_py.runtime.relay import RelayConfig
from tests.conftest import have_root_bpf
from tests.proxy.test_proxy_lab import echo_through, udp_through
from tests.relay.conftest import CHECK, gateway_env, node
from tests.relay.lab import RELAY_MARK, SERVER4, Lab

pytestmark = pytest.mark.root

PORT = 8390
PASSWORD = "plugin-pw"
CIPHER = "aes-128-gcm"
CERTS = Path(tempfile.gettempdir()) / f"v2ray-plugin-ca-{os.getpid()}"  # made and removed by the fixture
WSS_HOST = "cdn.lab.test"
# (server ip, server plugin, server plugin options, client plugin name as links write it, client options)
SETUPS = {
    "obfs_http": ("10.77.2.34", "obfs-server", "obfs=http", "obfs-local", "obfs=http;obfs-host=www.example.com"),
    "obfs_tls": ("10.77.2.35", "obfs-server", "obfs=tls", "simple-obfs", "obfs=tls;obfs-host=www.example.com"),
    "v2ray_ws": ("10.77.2.36", "ss-v2ray-plugin", "server;path=/ss", "v2ray-plugin", "path=/ss;host=cdn.example.com"),
    "v2ray_wss": ("10.77.2.44", "ss-v2ray-plugin", f"server;tls;host={WSS_HOST};path=/s;cert={CERTS}/cert.pem;"
                  f"key={CERTS}/key.pem", "v2ray-plugin", f"tls;host={WSS_HOST};path=/s;cert={CERTS}/ca.pem"),
}


def plugin_node(name: str) -> dict[str, Any]:
    ip, _, _, client, opts = SETUPS[name]
    return {**node(name, "ss", ip, PORT, None, PASSWORD), "cipher": CIPHER, "plugin": client,
            "plugin_opts": opts, "link": f"ss://{CIPHER}:{PASSWORD}@{ip}:{PORT}"}


NODES = [plugin_node(n) for n in SETUPS]
NAMES = list(SETUPS)


def manifest() -> dict[str, Any]:
    return {"nodes": NODES, "groups": [{"name": f"g_{n}", "id": 100 + i, "policy": "fixed",
                                        "fixed_index": 0, "nodes": [n], "check": CHECK}
                                       for i, n in enumerate(NAMES)]}


@pytest.fixture(scope="module")
def slab() -> Iterator[Lab]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    missing = [b for b in ("ss-server", "obfs-server", "obfs-local", "ss-v2ray-plugin") if not shutil.which(b)]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")
    CERTS.mkdir(exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert(WSS_HOST)
    cert.private_key_pem.write_to_path(str(CERTS / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(CERTS / "cert.pem"))
    ca.cert_pem.write_to_path(str(CERTS / "ca.pem"))
    lab = Lab().up_()
    try:
        for ip, server_plugin, server_opts, _, _ in SETUPS.values():
            peer = lab.start_peer(f"ss-server-{ip}", lab.up, [
                "ss-server", "-s", ip, "-p", str(PORT), "-k", PASSWORD, "-m", CIPHER, "-u",
                "-b", ip, "-t", "30", "--plugin", server_plugin, "--plugin-opts", server_opts])
            lab.wait_listening(lab.up, ip, PORT, peer)
        yield lab
    finally:
        plugins.stop_all()
        lab.down()
        shutil.rmtree(CERTS, ignore_errors=True)


def plugin_pids() -> list[int]:
    return [p.proc.pid for p in plugins._RUNNING.values() if p.proc is not None]


@pytest.fixture(scope="module")
def marked(slab: Lab, tmp_path_factory: pytest.TempPathFactory) -> RelayConfig:
    """The relay's config with a build's sockmark.o: the plugins run in the marking cgroup."""
    build = tmp_path_factory.mktemp("plugins-build")
    compile_sockmark(build)
    return RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3,
                       sockmark_object=str(build / sockmark.OBJECT_NAME))


@pytest.mark.parametrize("name", NAMES)
def test_tcp_and_udp_through_a_sip003_plugin_reach_the_target(slab: Lab, marked: RelayConfig, name: str) -> None:
    ip = SETUPS[name][0]
    gid = 100 + NAMES.index(name)
    cgroup = cgroup2_mount() / f"{sockmark.PREFIX}{os.getpid()}"

    async def scenario() -> list[int]:
        async with gateway_env(slab, manifest(), marked) as env:
            pids = plugin_pids()
            assert len(pids) == len(NAMES)  # every group started its node's plugin
            deadline = time.monotonic() + 5  # each joins it as it starts (before it execs)
            while sorted((cgroup / "cgroup.procs").read_text().split()) != sorted(map(str, pids)):
                assert time.monotonic() < deadline, (cgroup / "cgroup.procs").read_text()
                await asyncio.sleep(0.02)
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, gid, 1 << 20)
            assert sent == echoed and who == ip
            who, _ = await udp_through(env, socket.AF_INET, SERVER4, gid)
            assert who == ip
        return pids

    pids = slab.run(scenario)
    assert not plugins._RUNNING and not cgroup.exists()
    for pid in pids:  # stopped with the gateway
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_a_plugin_that_dies_is_restarted_and_flows_go_on(slab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    name = "obfs_http"
    gid = 100 + NAMES.index(name)

    async def scenario() -> None:
        async with gateway_env(slab, manifest()) as env:
            running = next(p for p in plugins._RUNNING.values() if p.node_name == name)
            assert running.proc is not None
            old = running.proc.pid
            os.kill(old, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while running.restarts == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert running.restarts == 1 and running.alive
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, gid, 65536)
            assert sent == echoed and who == SETUPS[name][0]

    with caplog.at_level(logging.INFO):
        slab.run(scenario)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"node '{name}': SIP003 plugin obfs-local died" in text, text
    assert PASSWORD not in text


def test_a_plugin_that_is_not_installed_fails_the_dial_naming_node_and_plugin(slab: Lab) -> None:
    bad = {**plugin_node("obfs_http"), "name": "noplug", "plugin": "no-such-plugin-xyz"}
    good = plugin_node("obfs_tls")
    group = {"name": "fo", "id": 2, "policy": "fixed", "fixed_index": 0, "nodes": ["noplug", "obfs_tls"],
             "check": CHECK}

    async def scenario() -> None:
        async with gateway_env(slab, {"nodes": [bad, good], "groups": [group]}) as env:
            who, sent, echoed = await echo_through(env, socket.AF_INET, SERVER4, 2, 4096)
            assert sent == echoed and who == SETUPS["obfs_tls"][0]  # failed over
            stats = env.gateway.table.get(2).stats  # type: ignore[union-attr]  # a Group
            assert "no-such-plugin-xyz" in (stats["tcp"]["noplug"].last_error or "")

    slab.run(scenario)
