"""Sockets below the protocols: what `proxy/`, `groups/` and `relay/` share, importing none of them.

- `poller`: one epoll set per event loop for the relay's sockets (`FdPoller`, `poller_for`);
- `sockets`: non-blocking connect with so_mark and timeouts (`DialOptions`, `connect_tcp`),
  resolution, transparent-socket options;
- `stream`: byte streams over those sockets (`SocketStream`, splice-able; `TlsStream`) and the
  bounded handshake readers;
- `tls`: client TLS contexts and the connect-then-handshake of TLS-carried protocols;
- `errors`: why a flow could not be carried (`OutboundError` and its kinds).
"""
