"""Peers for the sniffing lab test, run in the lab's upstream namespace as scripts:

    python -m tests.sniff.lab_peers socks PORT BIND_IP LOG NAMES_JSON
    python -m tests.sniff.lab_peers tls PORT CERT KEY
    python -m tests.sniff.lab_peers banner PORT

`socks`: a SOCKS5 server (no auth, CONNECT only) that writes one JSON line per request to LOG,
{"atyp": 1|3|4, "host": ..., "port": ...}, so a test sees whether the gateway sent a name or an
address; names resolve through NAMES_JSON (the lab has no resolver), and it connects out from
BIND_IP. `tls`: after the handshake, answers with the client address it saw and the SNI it got.
`banner`: speaks first (server-first protocols), sending the client address it saw.
"""
from __future__ import annotations

import asyncio
import json
import socket
import ssl
import struct
import sys
from typing import Any


async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except OSError:
        pass
    finally:
        try:
            w.write_eof()
        except OSError:
            pass


async def socks(port: int, bind_ip: str, log_path: str, names: dict[str, str]) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ver, n = await r.readexactly(2)
            await r.readexactly(n)
            w.write(b"\x05\x00")
            _v, cmd, _rsv, atyp = await r.readexactly(4)
            if atyp == 1:
                host = socket.inet_ntop(socket.AF_INET, await r.readexactly(4))
            elif atyp == 4:
                host = socket.inet_ntop(socket.AF_INET6, await r.readexactly(16))
            else:
                host = (await r.readexactly((await r.readexactly(1))[0])).decode()
            (dport,) = struct.unpack("!H", await r.readexactly(2))
            with open(log_path, "a") as f:
                f.write(json.dumps({"atyp": atyp, "host": host, "port": dport, "cmd": cmd}) + "\n")
            if cmd != 1:
                w.write(b"\x05\x07\x00\x01" + bytes(6))
                w.close()
                return
            ip = names.get(host, host)
            ur, uw = await asyncio.open_connection(ip, dport, local_addr=(bind_ip, 0))
            w.write(b"\x05\x00\x00\x01" + socket.inet_aton(bind_ip) + b"\x00\x00")
            await w.drain()
            await asyncio.gather(pipe(r, uw), pipe(ur, w))
        except (OSError, asyncio.IncompleteReadError, UnicodeDecodeError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    await server.serve_forever()


async def tls(port: int, cert: str, key: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    seen: dict[int, Any] = {}

    def sni(obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        seen[id(obj)] = name

    ctx.sni_callback = sni

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        peer = w.get_extra_info("peername")[0]
        obj = w.get_extra_info("ssl_object")
        w.write(json.dumps({"peer": peer, "sni": seen.pop(id(obj), None)}).encode() + b"\n")
        await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port, ssl=ctx)
    await server.serve_forever()


async def banner(port: int) -> None:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(json.dumps({"peer": w.get_extra_info("peername")[0]}).encode() + b"\n")
        await w.drain()
        await r.read(100)
        w.close()

    server = await asyncio.start_server(handle, "0.0.0.0", port)
    await server.serve_forever()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "socks":
        asyncio.run(socks(port, sys.argv[3], sys.argv[4], json.loads(sys.argv[5])))
    elif kind == "tls":
        asyncio.run(tls(port, sys.argv[3], sys.argv[4]))
    else:
        asyncio.run(banner(port))


if __name__ == "__main__":
    main()
