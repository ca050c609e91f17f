"""domain_filter only fills (unbinding leaves its bits set); the binder rebuilds it from the live
bindings once its fill passes the threshold. On a real loaded program: a rebuild clears the
stale bits, keeps every live binding's, and the program still routes live addresses by domain
and skips the lookup for the expired ones."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from dae_py.runtime.dns.binder import Binder
from dae_py.runtime.domain_map import FILTER_BITS
from dae_py.runtime.packets import FlowSpec
from tests.compiler.compiler_kit import Kernel, compile_text
from tests.conftest import have_root_bpf

CONFIG = """\
global: {lan_interface: [eth0]}
dns: {upstream: {u: 'udp://10.0.0.2:53'}}
routing:
  rules:
    - "domain(suffix: proxied.test) -> block"
  fallback: direct
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def v4(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(0x0A000000 + i * 7919)  # spread over 10/8


def spec(dst: ipaddress.IPv4Address) -> FlowSpec:
    return FlowSpec(6, ipaddress.ip_address("192.168.1.2"), 40000, dst, 443)


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Kernel:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    c = compile_text(Path(tmp_path_factory.mktemp("dfilter")), CONFIG)
    return Kernel(c.build)


def test_filter_is_rebuilt_from_live_bindings_past_its_threshold(kernel: Kernel) -> None:
    b = kernel.domains
    assert b is not None
    bits = kernel.build.domain_matcher.bits("a.proxied.test")
    clock = Clock()
    binder = Binder(b, lambda _n: bits, grace=0, clock=clock, filter_rebuild_fill=0.005)
    live = [v4(i) for i in range(50)]
    stale = [v4(i) for i in range(50, 8000)]
    binder.refresh(tuple(live), bits, 3600, force=True)
    binder.refresh(tuple(stale), bits, 10, force=True)
    full = b.filter_fill()
    assert full * FILTER_BITS > 7000  # ~7,950 bits (a few addresses share one)
    # past the threshold (0.76 % > 0.5 %), but every bit is a live binding's: nothing to clear
    assert not binder.maybe_rebuild_filter() and b.rebuilds == 0
    clock.now += 11
    assert binder.sweep() == len(stale)  # expired and unbound; the sweep then rebuilds the filter
    assert b.rebuilds == 1
    assert b.filter_fill() * FILTER_BITS <= len(live)
    assert all(b.filter_bit_set(a) for a in live)
    cleared = sum(not b.filter_bit_set(a) for a in stale)
    assert cleared > 0.99 * len(stale)
    for a in live[:10]:  # the program still finds the live entries, by their filter bit
        assert kernel.run_spec(spec(a), leave_domains=True).rule == 0
    for a in stale[:10]:
        assert kernel.run_spec(spec(a), leave_domains=True).rule is None


def test_no_rebuild_below_the_threshold_or_when_live_bindings_fill_it(kernel: Kernel) -> None:
    b = kernel.domains
    assert b is not None
    bits = kernel.build.domain_matcher.bits("a.proxied.test")
    before = b.rebuilds
    quiet = Binder(b, lambda _n: bits, grace=0, clock=Clock(), filter_rebuild_fill=0.5)
    quiet.refresh(tuple(v4(i) for i in range(9000, 9100)), bits, 60, force=True)
    assert not quiet.maybe_rebuild_filter()  # far below half full
    busy = Binder(b, lambda _n: bits, grace=0, clock=Clock(), filter_rebuild_fill=1e-6)
    busy.refresh(tuple(v4(i) for i in range(10000, 10200)), bits, 60, force=True)
    assert b.filter_fill() * FILTER_BITS < 2 * len(busy) + 200  # (the first test's 50 plus these)
    assert not busy.maybe_rebuild_filter()  # over the threshold, but the live bindings fill it
    assert b.rebuilds == before
