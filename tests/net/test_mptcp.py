"""global.mptcp: the relay's TCP sockets to nodes are Multipath TCP (IPPROTO_MPTCP) where the
kernel allows it, and plain TCP where it refuses (no MPTCP, or net.mptcp.enabled=0), so turning
the option on never costs a connection. Loopback only; the refusing kernel is a fresh network
namespace (`unshare --net`) with MPTCP switched off, gone when its one process exits."""
from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys

import pytest

from dae_py.runtime.net.sockets import IPPROTO_MPTCP, DialOptions, connect_tcp, tcp_socket

SO_PROTOCOL = getattr(socket, "SO_PROTOCOL", 38)


def _mptcp_on() -> bool:
    try:
        with open("/proc/sys/net/mptcp/enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


@pytest.mark.skipif(not _mptcp_on(), reason="this kernel has MPTCP off or absent (net.mptcp.enabled)")
def test_an_mptcp_dial_to_a_loopback_listener_connects_over_mptcp() -> None:
    async def run() -> tuple[int, bytes]:
        got: list[bytes] = []

        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            got.append(await r.read(5))
            w.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        sock = await connect_tcp("127.0.0.1", port, DialOptions(mptcp=True, connect_timeout=5.0))
        try:
            proto = sock.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL)
            sock.setblocking(True)
            sock.sendall(b"hello")
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.01)
        finally:
            sock.close()
            server.close()
            await server.wait_closed()
        return proto, got[0] if got else b""

    proto, data = asyncio.run(run())
    assert proto == IPPROTO_MPTCP
    assert data == b"hello"


def test_without_mptcp_the_socket_is_plain_tcp() -> None:
    with tcp_socket(socket.AF_INET, mptcp=False) as s:
        assert s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL) == socket.IPPROTO_TCP


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_where_the_kernel_refuses_mptcp_the_socket_falls_back_to_tcp() -> None:
    probe = ("import socket; from dae_py.runtime.net.sockets import tcp_socket\n"
             "try:\n    open('/proc/sys/net/mptcp/enabled', 'w').write('0')\n"
             "except OSError:\n    pass\n"  # no MPTCP in this kernel at all: refused anyway
             "try:\n    socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)\n"
             "except OSError as e:\n    print('refused', e.errno)\n"
             "s = tcp_socket(socket.AF_INET, mptcp=True)\n"
             "print('protocol', s.getsockopt(socket.SOL_SOCKET, 38))\n")
    out = subprocess.run(["unshare", "--net", sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert lines[0].startswith("refused ")  # the namespace's kernel does refuse MPTCP sockets
    assert lines[1] == f"protocol {socket.IPPROTO_TCP}"
