"""Test peers of our own: an HTTP server and a UDP echo server that report who they saw.

Run as a script inside a namespace (stdlib only, so it starts from any interpreter and does not
import the project):

    python peer_servers.py http --port 8080
    python peer_servers.py udp-echo --port 9000
    python peer_servers.py http --port 8443 --tls-cert server.pem --tls-key server.key  (HTTPS)

Why our own: the gateway tests need to see which source address reached the upstream (the
client's, when routed directly; the proxy's, when relayed). Python's http.server resolves the
host name when it binds and stalls in a namespace without a resolver.

HTTP: every GET answers `{"peer": IP, "port": N, "local": IP, "local_port": N, "path": P}`;
`GET /bytes/N` answers N zero bytes instead (for throughput). Connection: close.
UDP: every datagram is answered with b"<peer ip> <peer port>\\n" + the datagram.
Both listen on 0.0.0.0 and :: (v6-only) unless --host is given.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import socket
from typing import Any, cast

log = logging.getLogger("peer")

CHUNK = 64 * 1024
MAX_HEADER = 64 * 1024


def plain_ip(addr: str) -> str:
    """'::ffff:10.0.0.1' -> '10.0.0.1'; drop a '%scope'."""
    addr = addr.split("%", 1)[0]
    if addr.startswith("::ffff:") and "." in addr:
        return addr[7:]
    return addr


async def handle_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    local = writer.get_extra_info("sockname")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
            ConnectionError) as exc:
        log.info("http %s:%s: no request (%s)", peer[0], peer[1], type(exc).__name__)
        writer.close()
        return
    request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split()
    method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "/")
    log.info("http %s port %s -> %s port %s: %s", plain_ip(peer[0]), peer[1],
             plain_ip(local[0]), local[1], request_line)
    try:
        if method not in ("GET", "HEAD"):
            body = b"only GET\n"
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n%s" % (len(body), body))
        elif path.startswith("/bytes/"):
            size = int(path.split("/")[2])
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size)
            zeros = bytes(CHUNK)
            left = size if method == "GET" else 0
            while left > 0:
                n = min(left, CHUNK)
                writer.write(zeros[:n])
                left -= n
                await writer.drain()
        else:
            body = json.dumps({
                "peer": plain_ip(peer[0]), "port": peer[1],
                "local": plain_ip(local[0]), "local_port": local[1], "path": path,
            }).encode() + b"\n"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
            if method == "GET":
                writer.write(body)
        await writer.drain()
    except (ConnectionError, ValueError) as exc:
        log.info("http %s: %s", plain_ip(peer[0]), exc)
    finally:
        writer.close()


class UdpEcho(asyncio.DatagramProtocol):
    """Echo each datagram prefixed with the sender's address, as the server saw it."""

    def __init__(self, verbose_first: int = 200) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.count = 0
        self.verbose_first = verbose_first

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.count += 1
        ip = plain_ip(addr[0])
        if self.count <= self.verbose_first or self.count % 1000 == 0:
            log.info("udp #%d %s port %s: %d bytes", self.count, ip, addr[1], len(data))
        assert self.transport is not None
        self.transport.sendto(f"{ip} {addr[1]}\n".encode() + data, addr)


def _sockets(kind: int, hosts: list[str], port: int) -> list[socket.socket]:
    socks = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        socks.append(s)
    return socks


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hosts = args.host or ["0.0.0.0", "::"]
    closers = []
    if args.mode == "http":
        tls = None
        if args.tls_cert:
            import ssl

            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        for s in _sockets(socket.SOCK_STREAM, hosts, args.port):
            server = await asyncio.start_server(handle_http, sock=s, backlog=1024, ssl=tls)
            closers.append(server.close)
    else:
        for s in _sockets(socket.SOCK_DGRAM, hosts, args.port):
            transport, _ = await loop.create_datagram_endpoint(UdpEcho, sock=s)
            closers.append(transport.close)
    log.info("%s listening on %s port %d", args.mode, ", ".join(hosts), args.port)
    await stop.wait()
    for close in closers:
        close()
    log.info("%s stopped", args.mode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["http", "udp-echo"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", action="append", help="address to bind (repeatable)")
    parser.add_argument("--tls-cert", help="http: serve HTTPS with this certificate (PEM)")
    parser.add_argument("--tls-key", help="http: the certificate's key (PEM)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
