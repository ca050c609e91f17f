"""A test CA the runtime trusts for the length of a block, without touching the machine's store."""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from dae_py.runtime.net.tls import client_context


@contextlib.contextmanager
def trusting(ca_file: str | Path) -> Iterator[None]:
    """The runtime's default TLS context trusts the system store, which OpenSSL reads from
    SSL_CERT_FILE: pointed at `ca_file` while the block runs (the cached context is dropped on
    the way in and out, so both sides of the block build their own)."""
    old = os.environ.get("SSL_CERT_FILE")
    os.environ["SSL_CERT_FILE"] = str(ca_file)
    client_context.cache_clear()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = old
        client_context.cache_clear()
