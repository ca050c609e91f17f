"""One subscription body: `https://`/`http://` through aiohttp on the gateway's own marked
sockets (SO_MARK, so the gateway's datapath lets them out), `file://` from disk; bounded in
size and time. Errors are FetchError with a message that never holds the URL's token."""
from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from dae_py.contract.subformats import MAX_BODY_BYTES
from dae_py.contract.urls import redact_url
from dae_py.contract.version import COMPILER_VERSION

USER_AGENT = f"dae-py/{COMPILER_VERSION}"
TIMEOUT_S = 15.0


class FetchError(RuntimeError):
    """The body could not be had; the message is safe to log."""


def _marked_socket(so_mark: int) -> Any:
    def factory(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family, kind, proto)
        if so_mark:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, so_mark)
            except OSError:
                sock.close()
                raise
        return sock
    return factory


async def _http(url: str, so_mark: int, timeout: float) -> bytes:
    import aiohttp  # lazy: a gateway without subscriptions never pays for it

    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(), socket_factory=_marked_socket(so_mark))
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout),
                                         headers={"User-Agent": USER_AGENT}) as session, \
                session.get(url, max_redirects=5) as resp:
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status} {resp.reason or ''}".strip())
            body = bytearray()
            async for chunk in resp.content.iter_chunked(1 << 16):
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    raise FetchError(f"body larger than {MAX_BODY_BYTES >> 20} MiB")
            return bytes(body)
    except FetchError:
        raise
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g}s") from None
    except aiohttp.ClientConnectorCertificateError as exc:
        why = getattr(exc.certificate_error, "verify_message", "") or "unverified"
        raise FetchError(f"TLS certificate refused: {why}") from None
    except aiohttp.ClientConnectorError as exc:
        raise FetchError(f"cannot connect: {exc.os_error.strerror or exc.os_error}") from None
    except aiohttp.ClientResponseError as exc:  # its str() quotes the URL
        raise FetchError(f"bad HTTP response ({exc.status}: {exc.message})") from None
    except (aiohttp.ClientError, OSError, ssl.SSLError) as exc:
        text = str(exc).replace(url, redact_url(url))
        raise FetchError(f"{type(exc).__name__}: {text}" if text else type(exc).__name__) from None


def _file(url: str) -> bytes:
    path = Path(unquote(urlsplit(url).path))
    try:
        with open(path, "rb") as f:
            body = f.read(MAX_BODY_BYTES + 1)
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(body) > MAX_BODY_BYTES:
        raise FetchError(f"{path} is larger than {MAX_BODY_BYTES >> 20} MiB")
    return body


async def fetch_body(url: str, so_mark: int = 0, timeout: float = TIMEOUT_S) -> bytes:
    scheme = url.partition("://")[0].lower()
    if scheme == "file":
        return await asyncio.to_thread(_file, url)
    if scheme in ("http", "https"):
        return await _http(url, so_mark, timeout)
    raise FetchError(f"unsupported scheme {scheme!r}")
