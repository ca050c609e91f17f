"""TCP echo server for the runtime benchmarks: `python echo_server.py PORT [PORT...]`.

Standalone (stdlib + uvloop, no project imports) so it starts fast in any namespace. Listens on
0.0.0.0 on every port, echoes whatever arrives, holds idle connections as long as the peer does.
Exits on SIGTERM/SIGINT.
"""
from __future__ import annotations

import asyncio
import signal
import socket
import sys
from typing import cast

try:
    import uvloop
    have_uvloop = True
except ImportError:  # pragma: no cover - plain asyncio works, only slower
    have_uvloop = False


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream server's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


async def main(ports: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    servers = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        servers.append(await loop.create_server(Echo, sock=s, backlog=8192))
    print(f"echo listening on {ports}", flush=True)
    await stop.wait()
    for server in servers:
        server.close()


if __name__ == "__main__":
    ports = [int(p) for p in sys.argv[1:]]
    if have_uvloop:
        uvloop.run(main(ports))
    else:
        asyncio.run(main(ports))
