"""The DNS module: answers clients' queries and binds each answer's addresses to the domain
sets its name matched, before the answer leaves (no first-flow race).

- `listener`: UDP and TCP servers on `dns.bind` (malformed input is dropped or FORMERR'd).
- `upstream`: udp, tcp, tcp+udp, tls (DoT), https (DoH, HTTP/2) transports, with so_mark.
- `rules`: request routing (qname, qtype -> upstream | asis | reject) and response routing
  (upstream, ip, qname, qtype -> accept | reject | another upstream), from the manifest.
- `cache`: TTLs, fixed_domain_ttl, a size limit, in-flight deduplication.
- `binder`: domain bits of the name and its CNAME chain -> DomainBindings, with expiry.
- `module`: `DnsModule.start(build, bindings, so_mark)` wires them together.
"""
from __future__ import annotations

from .module import DnsModule

__all__ = ["DnsModule"]
