"""DNS upstream transports, one module per scheme (`registry.SCHEMES`), all through `base.Upstream`.

`make(spec, so_mark, timeout, route)` builds the upstream of one manifest entry; a scheme with
no module gives an `Unsupported` one (the module warns at start; its queries get SERVFAIL).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from dae_py.contract.manifest import DnsUpstream

from .base import Route, Upstream, UpstreamError
from .registry import SCHEMES


class Unsupported(Upstream):
    supported = False
    transports = ()


def upstream_class(scheme: str) -> type[Upstream]:
    where = SCHEMES.get(scheme)
    if where is None:
        return Unsupported
    mod, _, cls = where.partition(":")
    found: type[Upstream] = getattr(importlib.import_module(f"{__name__}.{mod}"), cls)
    return found


def make(raw: DnsUpstream | Mapping[str, Any], so_mark: int, timeout: float, route: Route | None = None) -> Upstream:
    spec = raw if isinstance(raw, DnsUpstream) else DnsUpstream.from_json(raw)
    return upstream_class(spec.scheme)(spec.name, spec.scheme, spec.host, spec.port, spec.path,
                                       so_mark=so_mark, timeout=timeout, route=route)


__all__ = ["Route", "SCHEMES", "Unsupported", "Upstream", "UpstreamError", "make", "upstream_class"]
