"""A three-namespace lab for the relay: client -> gateway (tproxy) -> upstream (proxies, servers).

    client ns  c0 10.77.1.2 / fd77:1::2
        |
    gw ns      g0 10.77.1.1 / fd77:1::1   (nftables tproxy of everything from g0 to :12345,
               g1 10.77.2.1 / fd77:2::1    fwmark 1 -> local route table 100)
        |
    up ns      u1 10.77.2.2 + proxies 10.77.2.10.. + servers 10.77.2.100 / fd77:2::...

The relay runs in-process: the test's event loop runs on a thread that joined the gateway
namespace (a network namespace is per thread, and sockets keep the namespace they were made
in), and `socket(ns, ...)` makes client/server sockets in the other namespaces
(`runtime.lab.nsutil`, the one lab helper's namespace primitives).
Peers (danted, tinyproxy) run as processes under `nsenter --net=/run/netns/NAME`.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from dae_py.runtime.lab.nsutil import enter_netns, socket_in_netns

TPROXY_PORT = 12345
TPROXY_MARK = 1
RELAY_MARK = 0x80  # must differ from TPROXY_MARK, or the relay's own dials route to `local`

CLIENT4, CLIENT6 = "10.77.1.2", "fd77:1::2"
GW_UP4, GW_UP6 = "10.77.2.1", "fd77:2::1"
SERVER4, SERVER6 = "10.77.2.100", "fd77:2::100"
_counter = itertools.count()


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


class Peer:
    """A process started in a namespace; stopped by its pid (and its own process group)."""

    def __init__(self, name: str, ns: str, argv: list[str], log: Path, unshare_mount: str = ""):
        self.name = name
        self.log = log
        cmd = ["nsenter", f"--net=/run/netns/{ns}"]
        if unshare_mount:
            cmd += ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                    unshare_mount + ' exec "$@"', "sh"]
        self.proc = subprocess.Popen(cmd + argv, stdout=open(log, "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # children it forked, same group

    def alive(self) -> bool:
        return self.proc.poll() is None


class Lab:
    def __init__(self, prefix: str = "rly") -> None:
        """`prefix`: the start of the namespaces' names (a test module's own, to tell its
        leftovers apart)."""
        tag = f"{os.getpid() % 100000}{next(_counter)}"
        self.client, self.gw, self.up = f"{prefix}c{tag}", f"{prefix}g{tag}", f"{prefix}u{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="relaylab-"))
        os.chmod(self.dir, 0o777)  # tinyproxy drops to nobody and writes its log here
        self.peers: list[Peer] = []
        self._made: list[str] = []
        self._proxy_ips = (f"10.77.2.{i}" for i in range(30, 50))

    # --- namespaces ------------------------------------------------------------------------
    def up_(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        c, g, u = self.client, self.gw, self.up
        for ns in (c, g, u):
            sh("ip", "netns", "add", ns)
            self._made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", c, "link", "add", "c0", "type", "veth", "peer", "name", "g0", "netns", g)
        sh("ip", "-n", g, "link", "add", "g1", "type", "veth", "peer", "name", "u1", "netns", u)
        for ns, dev, v4, v6 in ((c, "c0", "10.77.1.2/24", "fd77:1::2/64"),
                                (g, "g0", "10.77.1.1/24", "fd77:1::1/64"),
                                (g, "g1", "10.77.2.1/24", "fd77:2::1/64"),
                                (u, "u1", "10.77.2.2/24", "fd77:2::2/64")):
            sh("ip", "-n", ns, "addr", "add", v4, "dev", dev)
            sh("ip", "-n", ns, "-6", "addr", "add", v6, "dev", dev, "nodad")
            sh("ip", "-n", ns, "link", "set", dev, "up")
        for extra in ("10.77.2.100/32",) + tuple(f"10.77.2.{i}/32" for i in range(10, 50)):
            sh("ip", "-n", u, "addr", "add", extra, "dev", "u1")
        for i in ("100",) + tuple(str(i) for i in range(10, 50)):
            sh("ip", "-n", u, "-6", "addr", "add", f"fd77:2::{i}/128", "dev", "u1", "nodad")
        sh("ip", "-n", c, "route", "add", "default", "via", "10.77.1.1")
        sh("ip", "-n", c, "-6", "route", "add", "default", "via", "fd77:1::1")
        sh("ip", "-n", u, "route", "add", "default", "via", "10.77.2.1")
        sh("ip", "-n", u, "-6", "route", "add", "default", "via", "fd77:2::1")
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
                    "net.ipv4.conf.g0.rp_filter"):
            sh("nsenter", f"--net=/run/netns/{g}", "sysctl", "-qw", f"{key}=0")
        for fam in ("-4", "-6"):
            sh("ip", "-n", g, fam, "rule", "add", "fwmark", str(TPROXY_MARK), "lookup", "100")
            sh("ip", "-n", g, fam, "route", "add", "local", "default" if fam == "-4" else "::/0",
               "dev", "lo", "table", "100")
        rules = self.dir / "tproxy.nft"
        rules.write_text(
            "table inet relaylab {\n"
            "  chain pre {\n"
            "    type filter hook prerouting priority mangle; policy accept;\n"
            f'    iifname "g0" meta nfproto ipv4 meta l4proto {{ tcp, udp }} '
            f"tproxy ip to :{TPROXY_PORT} meta mark set {TPROXY_MARK} accept\n"
            f'    iifname "g0" meta nfproto ipv6 meta l4proto {{ tcp, udp }} '
            f"tproxy ip6 to :{TPROXY_PORT} meta mark set {TPROXY_MARK} accept\n"
            "  }\n}\n")
        sh("nsenter", f"--net=/run/netns/{g}", "nft", "-f", str(rules))

    def down(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()
        self.peers.clear()
        for ns in reversed(self._made):
            sh("ip", "netns", "del", ns, check=False)
        self._made.clear()
        if not os.environ.get("RELAYLAB_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- running code in the namespaces ----------------------------------------------------
    def run(self, fn: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
        """Run `fn()` on a uvloop loop in a fresh thread inside the gateway namespace."""
        result: dict[str, Any] = {}

        def body() -> None:
            try:
                enter_netns(self.gw)
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    result["value"] = runner.run(asyncio.wait_for(fn(), timeout))
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                result["error"] = exc

        thread = threading.Thread(target=body, name=f"netns-{self.gw}")
        thread.start()
        thread.join(timeout + 15)
        if thread.is_alive():
            raise TimeoutError("lab coroutine did not finish")
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def socket(self, ns: str, family: int, kind: int) -> socket.socket:
        sock = socket_in_netns(ns, family, kind)
        sock.setblocking(False)
        return sock

    # --- peers -----------------------------------------------------------------------------
    def next_proxy_ip(self) -> str:
        return next(self._proxy_ips)

    def start_peer(self, name: str, ns: str, argv: list[str], unshare_mount: str = "") -> Peer:
        peer = Peer(name, ns, argv, self.dir / f"{name}.log", unshare_mount)
        self.peers.append(peer)
        return peer

    def danted(self, ip4: str, ip6: str | None = None, port: int = 1080,
               user: tuple[str, str] | None = None) -> Peer:
        """A real dante SOCKS5 server; with `user`, username/password from a private passwd."""
        name = f"danted-{ip4}"
        conf = self.dir / f"{name}.conf"
        lines = [f"logoutput: {self.dir / (name + '.log')}",
                 f"internal: {ip4} port = {port}", f"external: {ip4}"]
        if ip6:
            lines += [f"internal: {ip6} port = {port}", f"external: {ip6}"]
        if os.environ.get("RELAYLAB_KEEP"):
            lines.append("debug: 1")
        lines += ["clientmethod: none",
                  f"socksmethod: {'username' if user else 'none'}",
                  "user.privileged: root", "user.unprivileged: nobody",
                  "client pass { from: 0/0 to: 0/0 log: error }",
                  "socks pass { from: 0/0 to: 0/0 log: error }"]
        conf.write_text("\n".join(lines) + "\n")
        mounts = ""
        if user:
            # The test user lives in a read-only overlay over /etc, seen by danted only. (Not a
            # bind mount over /etc/passwd: a useradd elsewhere renames over that file, which
            # silently detaches such a mount in every namespace.)
            etc = self.dir / f"{name}.etc"
            etc.mkdir()
            (etc / "passwd").write_text(
                Path("/etc/passwd").read_text()
                + f"{user[0]}:x:64123:64123::/nonexistent:/usr/sbin/nologin\n")
            hashed = sh("openssl", "passwd", "-6", user[1]).stdout.strip()
            (etc / "shadow").write_text(f"{user[0]}:{hashed}:19000:0:99999:7:::\n")
            os.chmod(etc / "shadow", 0o600)
            mounts = f"mount -t overlay overlay -o lowerdir={etc}:/etc /etc &&"
        peer = self.start_peer(name, self.up, ["danted", "-f", str(conf)], unshare_mount=mounts)
        self.wait_listening(self.up, ip4, port, peer)
        return peer

    def tinyproxy(self, ip4: str, port: int = 8888, user: tuple[str, str] | None = None) -> Peer:
        name = f"tinyproxy-{ip4}"
        conf = self.dir / f"{name}.conf"
        lines = ["User nobody", "Group nogroup", f"Port {port}", f"Listen {ip4}", f"Bind {ip4}",
                 "Timeout 30",
                 f'LogFile "{self.dir / (name + ".log")}"', "LogLevel Info", "MaxClients 64",
                 "Allow 10.77.0.0/16", "DisableViaHeader Yes"]
        if user:
            lines.append(f"BasicAuth {user[0]} {user[1]}")
        conf.write_text("\n".join(lines) + "\n")
        peer = self.start_peer(name, self.up, ["tinyproxy", "-d", "-c", str(conf)])
        self.wait_listening(self.up, ip4, port, peer)
        return peer

    def ss_server(self, ips: list[str], port: int, method: str, password: str,
                  bind: str | None = None) -> Peer:
        """shadowsocks-libev's ss-server with UDP (-u) on `ips`; `bind`: the address its
        outgoing connections leave from (so a target sees which node carried a flow)."""
        name = f"ss-server-{ips[0]}-{port}"
        argv = ["ss-server", "-p", str(port), "-k", password, "-m", method, "-u", "-v",
                "-t", "30"]
        for ip in ips:
            argv += ["-s", ip]
        if bind:
            argv += ["-b", bind]
        peer = self.start_peer(name, self.up, argv)
        for ip in ips:
            self.wait_listening(self.up, ip, port, peer)
        return peer

    def v2ray_ss_server(self, ip: str, port: int, method: str, password: str) -> Peer:
        """v2ray 4.34's shadowsocks inbound (TCP and UDP) on `ip`, leaving from `ip`: an
        implementation of the server side independent of shadowsocks-libev."""
        name = f"v2ray-ss-{ip}-{port}"
        conf = self.dir / f"{name}.json"
        conf.write_text(json.dumps({
            "log": {"loglevel": "warning"},
            "inbounds": [{"listen": ip, "port": port, "protocol": "shadowsocks",
                          "settings": {"method": method, "password": password,
                                       "network": "tcp,udp"}}],
            "outbounds": [{"protocol": "freedom", "sendThrough": ip}],
        }))
        peer = self.start_peer(name, self.up, ["v2ray", "-config", str(conf)])
        self.wait_listening(self.up, ip, port, peer)
        return peer

    def trojan_server(self, port: int, password: str, cert: Path, key: Path,
                      fallback_port: int = 1) -> Peer:
        """Debian's trojan (trojan-gfw) on every address of the upstream namespace; traffic
        that is not trojan goes to `fallback_port` on loopback (nothing listens on port 1: the
        server then closes such connections)."""
        name = f"trojan-{port}"
        conf = self.dir / f"{name}.json"
        conf.write_text(json.dumps({
            "run_type": "server", "local_addr": "::", "local_port": port,
            "remote_addr": "127.0.0.1", "remote_port": fallback_port, "password": [password],
            "log_level": 1,
            "ssl": {"cert": str(cert), "key": str(key), "alpn": ["http/1.1"],
                    "reuse_session": True, "session_ticket": False},
            "tcp": {"no_delay": True, "keep_alive": True, "prefer_ipv4": False},
        }))
        peer = self.start_peer(name, self.up, ["trojan", "-c", str(conf)])
        self.wait_listening(self.up, "10.77.2.2", port, peer)
        return peer

    def wait_listening(self, ns: str, ip: str, port: int, peer: Peer, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not peer.alive():
                raise RuntimeError(f"{peer.name} exited: {peer.log.read_text()[-2000:]}")
            probe = socket_in_netns(ns, socket.AF_INET6 if ":" in ip else socket.AF_INET)
            try:
                probe.settimeout(0.5)
                if probe.connect_ex((ip, port)) == 0:
                    return
            finally:
                probe.close()
            time.sleep(0.05)
        raise RuntimeError(f"{peer.name} not listening on {ip}:{port}")
