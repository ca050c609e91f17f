"""Shared pieces of the runtime tests: a lab per module, the real `dae-runtime` process in its
gateway namespace, clients in the client namespace, and parsers for the runtime's log lines.

Everything runs for real: the compiled BPF object attached by `dae-runtime run` to the lab's
LAN interface, danted/tinyproxy as nodes, our HTTP and UDP-echo peers reporting the source
address they saw. Addresses exist only inside the lab's namespaces.
"""
from __future__ import annotations

import contextlib
import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import pytest

from dae_py.runtime.lab import Lab, http_get, parse_udp_echo
from dae_py.runtime.lab.gateway_proc import GatewayProcess, lab_config
from tests.conftest import have_root_bpf

__all__ = ["DnsServer", "Gw", "Lab", "client_get", "datapath_sysctls", "flow_lines", "gateway",
           "gateway_snapshot", "lab_config", "parse_exit_stats", "proxy_lab", "refused_promptly", "runtime_lab",
           "snapshot_diff", "udp_exchange", "wait_for"]

# The datapath's sysctls (runtime/datapath/sysctls.py `plan` and the keys its writes propagate
# to), as globs expanded inside the gateway namespace.
SYSCTL_GLOBS = (
    "net/ipv4/ip_forward",
    "net/ipv4/conf/*/forwarding",
    "net/ipv4/conf/*/send_redirects",
    "net/ipv4/conf/*/accept_redirects",
    "net/ipv4/conf/*/accept_local",
    "net/ipv4/conf/*/rp_filter",
    "net/ipv4/conf/*/src_valid_mark",
    "net/ipv6/conf/*/forwarding",
    "net/ipv6/conf/*/accept_ra",
)


def runtime_lab() -> Iterator[Lab]:
    """Body of each module's `lab` fixture: a lab with the HTTP peer on :8080 (the groups'
    tcp_check_url) and a DNS responder on :53 (their udp_check_dns), so health checks pass."""
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    with Lab() as lab:
        lab.start_http_peer(8080)
        with DnsServer(lab):
            yield lab


def proxy_lab(udp_ports: tuple[int, ...] = (9001,)) -> Iterator[Lab]:
    """runtime_lab plus a proxy node and targets: danted on :1080, the HTTP peer on :8081 and
    UDP echoes on `udp_ports`, all in upstream."""
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_http_peer(8081)
        for port in udp_ports:
            lab.start_udp_echo(port)
        yield lab


# --- a DNS responder for the health checks --------------------------------------------------


class DnsServer:
    """Answers every query (UDP and TCP, v4 and v6, port 53 in upstream) with an empty NOERROR
    response: enough for the groups' udp_check_dns / DNS-over-TCP checks to pass."""

    def __init__(self, lab: Lab, port: int = 53) -> None:
        t = lab.topo
        self.socks: list[socket.socket] = []
        for host, fam in ((t.upstream_ip4, socket.AF_INET), (t.upstream_ip6, socket.AF_INET6)):
            for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                s = lab.socket("upstream", fam, kind)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
                if kind == socket.SOCK_STREAM:
                    s.listen(16)
                self.socks.append(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="lab-dns", daemon=True)
        self.queries = 0

    @staticmethod
    def answer(wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - not DNS: ignore
            return None
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NOERROR)
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.2)
            for s in ready:
                try:
                    if s.type == socket.SOCK_DGRAM:
                        data, addr = s.recvfrom(4096)
                        reply = self.answer(data)
                        if reply:
                            self.queries += 1
                            s.sendto(reply, addr)
                    else:
                        conn, _ = s.accept()
                        with conn:
                            conn.settimeout(2)
                            head = conn.recv(2, socket.MSG_WAITALL)
                            if len(head) == 2:
                                body = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
                                reply = self.answer(body)
                                if reply:
                                    self.queries += 1
                                    conn.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    continue

    def __enter__(self) -> DnsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


# --- the runtime process ------------------------------------------------------------------


class Gw(GatewayProcess):
    """GatewayProcess plus the waits and log parsing the tests need."""

    def wait_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> re.Match[str]:
        """The first match of `pattern` in the log after offset `since`; fails after timeout."""
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()[since:]
            m = rx.search(text)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; "
                                     f"log tail:\n{text[-3000:]}")
            time.sleep(0.05)

    def log_len(self) -> int:
        return len(self.log_text())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def state_entries(self) -> list[dict[str, Any]]:
        import json

        if not self.state_path.exists():
            return []
        return list(json.loads(self.state_path.read_text()).get("entries", []))


@contextlib.contextmanager
def gateway(lab: Lab, config_text: str, workdir: Path, **kw: Any) -> Iterator[Gw]:
    """Compile `config_text`, run `dae-runtime` in the gateway namespace until the block ends
    (SIGTERM), and whatever happens leave no process and no kernel state behind."""
    workdir.mkdir(parents=True, exist_ok=True)
    gw = Gw(lab, config_text, workdir, **kw)
    try:
        gw.start()  # on failure it kills the process and runs `cleanup` itself
        yield gw
    finally:
        gw.stop()  # SIGTERM if still running; waits for the last log lines either way
        if gw._log is not None:
            gw._log.close()
            gw._log = None
        if gw.state_entries():  # killed, or a teardown that failed: undo it
            gw.cleanup()
        if gw.proc is not None:
            lab.procs.forget(gw.proc)


# --- log lines ---------------------------------------------------------------------------

FLOW_RE = re.compile(
    r"relay\.(?P<relay>tcp|udp): (?P<proto>tcp|udp) (?P<src>\S+) -> (?P<dst>\S+)"
    r"(?: \((?P<why>rule (?P<rule>\d+) \((?P<file>[^:]+):(?P<line>\d+)\)|fallback)\))?"
    r" via (?P<outbound>\S+) node (?P<node>\S+)$", re.M)


@dataclass(frozen=True)
class FlowLine:
    proto: str
    src: str
    dst: str
    rule: int | None
    config_line: int | None
    outbound: str
    node: str


def flow_lines(log_text: str) -> list[FlowLine]:
    """The relay's one-line-per-flow records."""
    return [FlowLine(m["proto"], m["src"], m["dst"], int(m["rule"]) if m["rule"] else None,
                     int(m["line"]) if m["line"] else None, m["outbound"], m["node"])
            for m in FLOW_RE.finditer(log_text)]


KERNEL_RE = re.compile(r"kernel: (?P<kernel>.*?); relay: (?P<relay>.*)$", re.M)
KERNEL_ITEM = re.compile(r"(\S+)=(\d+)p/(\d+)B")
RELAY_ITEM = re.compile(r"(\S+)=(\d+)f\((\d+) active\)")


def parse_exit_stats(log_text: str) -> tuple[dict[str, tuple[int, int]], dict[str, int]]:
    """From the runtime's last 'kernel: ...; relay: ...' line: the kernel's per-outbound
    (packets, bytes) and the relay's per-outbound flow counts."""
    matches = list(KERNEL_RE.finditer(log_text))
    assert matches, f"no 'kernel: ...; relay: ...' line in the log:\n{log_text[-3000:]}"
    last = matches[-1]
    kernel = {n: (int(p), int(b)) for n, p, b in KERNEL_ITEM.findall(last["kernel"])}
    relay = {n: int(f) for n, f, _ in RELAY_ITEM.findall(last["relay"])}
    return kernel, relay


# --- clients -----------------------------------------------------------------------------


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def client_get(lab: Lab, host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """GET / from the client namespace to host:port; the HTTP peer's JSON (with "peer") and
    the client's own source port as "client_port"."""
    with lab.socket("client", _family(host)) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        sport = s.getsockname()[1]
        body = http_get(s, host)
    body["client_port"] = sport
    return body


def udp_exchange(lab: Lab, host: str, port: int, payload: bytes, timeout: float = 3.0,
                 tries: int = 3) -> tuple[str, int, bytes, tuple[str, int], int]:
    """Send `payload` from the client namespace to the UDP echo; (peer ip the echo saw, its
    port, echoed payload, reply source address, our source port). Resends a few times: the
    first datagram of a proxied flow waits for the UDP ASSOCIATE."""
    with lab.socket("client", _family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(timeout / tries)
        s.bind(("::" if ":" in host else "0.0.0.0", 0))
        sport = s.getsockname()[1]
        last: Exception | None = None
        for _ in range(tries):
            s.sendto(payload, (host, port))
            try:
                data, src = s.recvfrom(65535)
            except TimeoutError as exc:
                last = exc
                continue
            ip, pport, body = parse_udp_echo(data)
            return ip, pport, body, (src[0], src[1]), sport
        raise TimeoutError(f"no UDP echo from {host}:{port} after {tries} tries") from last


def wait_for(cond: Callable[[], Any], timeout: float = 5.0, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(step)


# --- kernel state ------------------------------------------------------------------------


def datapath_sysctls(lab: Lab) -> list[str]:
    """Every existing sysctl the datapath may touch, in the gateway namespace."""
    import glob as _glob

    def expand() -> list[str]:
        keys: list[str] = []
        for pattern in SYSCTL_GLOBS:
            keys += sorted(p[len("/proc/sys/"):] for p in _glob.glob(f"/proc/sys/{pattern}"))
        return keys

    return lab.call_in("gateway", expand)


def gateway_snapshot(lab: Lab) -> dict[str, Any]:
    """netlink_snapshot of the gateway namespace with the datapath's sysctls."""
    return lab.snapshot("gateway", datapath_sysctls(lab))


def snapshot_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """A readable difference of two snapshots, for assertion messages."""
    import json

    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            for k in sorted(set(va) | set(vb)):
                if va.get(k) != vb.get(k):
                    out.append(f"{key}.{k}: {va.get(k)!r} -> {vb.get(k)!r}")
            continue
        sa = {json.dumps(x, sort_keys=True) for x in va or []}
        sb = {json.dumps(x, sort_keys=True) for x in vb or []}
        out += [f"{key} gone: {x}" for x in sorted(sa - sb)]
        out += [f"{key} new:  {x}" for x in sorted(sb - sa)]
    return "\n".join(out)


def refused_promptly(lab: Lab, dst: str, port: int, limit: float = 3.0) -> float:
    """Connect (the relay accepts: tproxy), send a request, and expect the connection to be
    closed or reset, not answered and not left hanging. Returns how long it took."""
    fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with lab.socket("client", fam) as s:
        s.settimeout(limit + 2)
        t0 = time.monotonic()
        try:
            s.connect((dst, port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            data = s.recv(4096)
        except ConnectionError:
            data = b""
        elapsed = time.monotonic() - t0
    assert data == b"", f"expected the flow to be refused, got {data[:200]!r}"
    assert elapsed < limit, f"took {elapsed:.1f}s: the client hung"
    return elapsed
