"""Sniffing: the name a flow's first bytes carry (TLS SNI, HTTP/1 Host, QUIC Initial SNI).

Each sniffer is a pure function over bytes (no sockets, no clocks) and answers with the name
(lowercased, a valid DNS name, no trailing dot), `NEED_MORE` (what it has so far is the start of
its protocol: read more and ask again) or `NO` (not its protocol, malformed, or no name in it).
Nothing else ever comes out of a sniffer, whatever the input: the relay calls them on bytes from
anyone, and tests/sniff feeds them garbage, truncations and huge inputs to hold them to that.

- `tls.sniff(stream)`: the ClientHello's server_name, across several TLS records and several
  TCP segments (the caller concatenates what it read).
- `http.sniff(stream)`: the Host header of an HTTP/1.x request.
- `quic.sniff(datagrams)`: the SNI of the ClientHello carried by QUIC v1/v2 Initial packets
  (RFC 9001/9369 keys from the DCID), CRYPTO frames in any order, over several packets.
- `sniff_stream(stream)`: TLS or HTTP, whichever the first byte says.

`dialmode` (the relay's side: when to sniff, which name to dial, re-routing) builds on these.
"""
from __future__ import annotations

from .result import NEED_MORE, NO, Verdict, valid_name


def sniff_stream(data: bytes) -> str | Verdict:
    """A TCP stream's first bytes: TLS (first byte 0x16, a handshake record) or HTTP/1."""
    from . import http, tls

    if not data:
        return NEED_MORE
    if data[0] == 0x16:
        return tls.sniff(data)
    return http.sniff(data)


__all__ = ["NEED_MORE", "NO", "Verdict", "sniff_stream", "valid_name"]
