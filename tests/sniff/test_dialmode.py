"""Sniffing.decide and the DNS check, per dial_mode, without a network: which route and which
dial target a sniffed flow gets."""
from __future__ import annotations

from collections.abc import Iterable

import pytest

from dae_py.runtime.proxy import Destination
from dae_py.runtime.relay.flow import Flow, Route
from dae_py.runtime.sniff.dialmode import Sniffing

GROUP, OTHER_GROUP = 2, 3
FLOW = Flow("tcp", ("10.0.0.2", 40000), ("192.0.2.7", 443))


class Answers:
    def __init__(self, table: dict[tuple[str, int], list[str]]) -> None:
        self.table = table

    def addresses(self, name: str, version: int) -> Iterable[str] | None:
        return self.table.get((name, version))


class NameRouter:
    """Routes by the flow's sniffed name: *.direct.test direct, *.other.test another group."""

    def route(self, flow: Flow) -> Route:
        name = flow.domain or ""
        if name.endswith("direct.test"):
            return Route(0, 0, " (rule 0)")
        if name.endswith("other.test"):
            return Route(OTHER_GROUP, 1, " (rule 1)")
        return Route(GROUP)


def decide(mode: str, name: str | None, dns: Answers | None = None) -> tuple[Route, Destination]:
    s = Sniffing(mode, 0.1, dns)
    return s.decide(Route(GROUP), FLOW, name, NameRouter())


def test_ip_and_timeout_zero_turn_sniffing_off() -> None:
    assert Sniffing.for_settings("ip", 0.1) is None
    assert Sniffing.for_settings("domain++", 0) is None
    with pytest.raises(ValueError, match="not one of"):
        Sniffing("domain+++", 0.1)


def test_no_name_dials_the_address_in_every_mode() -> None:
    for mode in ("domain", "domain+", "domain++"):
        assert decide(mode, None) == (Route(GROUP), Destination("192.0.2.7", 443))


def test_domain_dials_the_name_only_when_dns_answered_it_with_this_address() -> None:
    dns = Answers({("a.test", 4): ["192.0.2.7", "192.0.2.8"], ("b.test", 4): ["192.0.2.9"],
                   ("c.test", 6): ["2001:db8::7"]})
    assert decide("domain", "a.test", dns) == (Route(GROUP), Destination("a.test", 443))
    assert decide("domain", "b.test", dns)[1] == Destination("192.0.2.7", 443)  # another address
    assert decide("domain", "c.test", dns)[1] == Destination("192.0.2.7", 443)  # only an AAAA
    assert decide("domain", "x.direct.test", dns) == (Route(GROUP), Destination("192.0.2.7", 443))  # no re-route
    assert decide("domain", "a.test", None)[1] == Destination("192.0.2.7", 443)  # no DNS module


def test_domain_plus_dials_any_name_without_rerouting() -> None:
    assert decide("domain+", "x.direct.test") == (Route(GROUP), Destination("x.direct.test", 443))


def test_domain_plus_plus_reroutes_and_dials_direct_by_address() -> None:
    assert decide("domain++", "x.direct.test") == (Route(0, 0, " (rule 0)"), Destination("192.0.2.7", 443))
    assert decide("domain++", "y.other.test") == (Route(OTHER_GROUP, 1, " (rule 1)"),
                                                  Destination("y.other.test", 443))
    route, target = Sniffing("domain++", 0.1).decide(Route(GROUP), FLOW, "y.other.test", NameRouter(),
                                                     by_name=False)
    assert (route.outbound, target) == (OTHER_GROUP, Destination("192.0.2.7", 443))  # UDP: by address


def test_direct_and_block_are_not_worth_sniffing() -> None:
    s = Sniffing("domain++", 0.1)
    assert not s.wants(0) and not s.wants(1) and s.wants(GROUP)
    d = Sniffing("domain", 0.1)
    assert not d.wants(GROUP)  # nothing to agree with: no DNS module
    d.dns = Answers({})
    assert d.wants(GROUP)
