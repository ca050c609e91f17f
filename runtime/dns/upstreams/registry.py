"""Which module serves each upstream scheme: one line per scheme (a new transport is its module
plus one line here). "module:Class", imported on first use."""
from __future__ import annotations

SCHEMES: dict[str, str] = {
    "udp": "udp:UdpUpstream",
    "tcp+udp": "udp:TcpUdpUpstream",
    "tcp": "tcp:TcpUpstream",
    "tls": "tcp:TlsUpstream",
    "https": "https:DohUpstream",
    "quic": "quic:QuicUpstream",
    "h3": "h3:H3Upstream",
    "http3": "h3:H3Upstream",  # dae's other spelling of h3://
}
