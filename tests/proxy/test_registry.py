"""The protocol registry: each protocol listed once, and each module exporting what its line
promises (the relay and the groups find dial, UDP and the fast path through it alone)."""
from __future__ import annotations

import inspect

from dae_py.runtime import proxy
from dae_py.runtime.proxy import registry
from dae_py.runtime.proxy.base import Node


def test_each_protocol_is_listed_once() -> None:
    assert len(set(registry.PROTOCOLS)) == len(registry.PROTOCOLS)
    assert set(registry.UDP_PROTOCOLS) <= set(registry.PROTOCOLS)


def test_each_module_exports_dial_and_associate_exactly_when_its_line_says_udp() -> None:
    for entry in registry.ENTRIES:
        module = registry.load(entry.scheme)
        assert inspect.iscoroutinefunction(module.dial), entry
        assert hasattr(module, "associate") == entry.udp, entry


def test_the_fast_path_comes_from_the_protocol_module() -> None:
    assert set(registry.fast_paths()) == {"socks5"}
    plain = Node(name="n", protocol="socks5", host="192.0.2.1", port=1080)
    with_auth = Node(name="n", protocol="socks5", host="192.0.2.1", port=1080, username="u")
    fast = proxy.fast_path(plain)
    assert fast is not None and fast.address(plain) is not None
    assert fast.address(with_auth) is None  # credentials: the coroutine handshake
    assert proxy.fast_path(Node(name="h", protocol="http", host="192.0.2.1", port=80)) is None


def test_node_support_for_udp_follows_the_registry() -> None:
    for scheme in registry.PROTOCOLS:
        node = Node(name="n", protocol=scheme, host="192.0.2.1", port=1)
        assert node.supports_udp == (scheme in registry.UDP_PROTOCOLS)
