"""Reusable network lab: client, gateway and upstream network namespaces with real peers.

The live demo and the tests import it:

    from dae_py.runtime.lab import Lab, cleanup_stale
    cleanup_stale()                      # leftovers of crashed runs
    with Lab() as lab:
        http = lab.start_http_peer(8080)
        lab.run("client", ["curl", f"http://{lab.topo.upstream_ip4}:8080/"])

See lab.py for the API, topology.py for the addresses, snapshot.py for before/after checks.
"""
from .clients import http_get, parse_udp_echo, read_http_response
from .lab import DEFAULT_PREFIX, Lab, cleanup_stale
from .nsutil import call_in_netns, pids_in_netns, socket_in_netns
from .peers import Listen, Peer, PeerStartError
from .snapshot import netlink_snapshot
from .topology import Topology

__all__ = [
    "DEFAULT_PREFIX", "Lab", "Listen", "Peer", "PeerStartError", "Topology", "call_in_netns",
    "cleanup_stale", "http_get", "netlink_snapshot", "parse_udp_echo", "pids_in_netns",
    "read_http_response", "socket_in_netns",
]
