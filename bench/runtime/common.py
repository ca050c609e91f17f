"""Shared pieces of the runtime benchmarks (issue 3): the lab with raised limits, the gateway
config, the peer proxies we compare against (redsocks, v2ray) and /proc readings.

Everything lives inside the lab's namespaces; nothing is started in the root namespace except
the orchestrating Python process itself. The processes started here are tracked by the lab and
killed by `Lab.close()`; the nftables tables and policy rules die with the gateway namespace.
"""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PY = sys.executable  # the venv's python: the helper scripts need uvloop

NOFILE = 200_000  # per process; fs.nr_open here is 1048576

REDSOCKS_PORT = 12346
V2RAY_PORT = 12347
V2RAY_MARK = 1  # differs from dae's fwmark (0x8000000) and so_mark (0x800000)
V2RAY_TABLE = 100  # dae's route_table is 2023


def raise_nofile(n: int = NOFILE) -> int:
    """Raise RLIMIT_NOFILE of this process as far as allowed; every process the lab starts
    (nsenter + exec) inherits it. Raising the hard limit needs CAP_SYS_RESOURCE, which this
    machine's sessions do not have (hard limit 20000): the soft limit then goes to the hard one.
    Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(hard, n)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def tune_lab(lab: Any) -> None:
    """Wider ephemeral port ranges (tens of thousands of short connections per run) and
    deep accept queues, in the lab's namespaces only."""
    for role in ("client", "gateway", "upstream"):
        lab.sysctl(role, "net.ipv4.ip_local_port_range", "10000 65000")
        lab.sysctl(role, "net.core.somaxconn", 8192)
        lab.sysctl(role, "net.ipv4.tcp_max_syn_backlog", 8192)
        lab.sysctl(role, "net.ipv4.tcp_tw_reuse", 1)


def gateway_config(topo: Any, proxy_ports: Sequence[int], relay_mode: str | None = None) -> str:
    """dae config: TCP to the upstream on `proxy_ports` -> the danted group, the rest direct.

    The direct cases go through the same rule list (they miss the proxy rules and hit the
    fallback), so the program does its whole classification for them. `relay_mode`: the
    config's global.relay_mode (sockmap, splice, copy); None leaves the runtime's default."""
    from dae_py.runtime.lab.gateway_proc import lab_config

    rules = [f"dip({topo.upstream_ip4}) && l4proto(tcp) && dport({p}) -> proxy" for p in proxy_ports]
    extra = f"  relay_mode: {relay_mode}" if relay_mode else ""
    return lab_config(topo, rules=rules, fallback="direct", extra_global=extra)


# --- peers we compare against -----------------------------------------------------------------

def redsocks_config(listen_ip: str, socks_ip: str, socks_port: int, port: int = REDSOCKS_PORT) -> str:
    return f"""\
base {{
    log_debug = off;
    log_info = off;
    log = stderr;
    daemon = off;
    redirector = iptables;
}}
redsocks {{
    local_ip = {listen_ip};
    local_port = {port};
    ip = {socks_ip};
    port = {socks_port};
    type = socks5;
    splice = true;
}}
"""


def v2ray_config(socks_ip: str, socks_port: int, port: int = V2RAY_PORT) -> str:
    cfg = {
        "log": {"loglevel": "warning"},
        "inbounds": [{
            "tag": "tproxy-in", "listen": "0.0.0.0", "port": port, "protocol": "dokodemo-door",
            "settings": {"network": "tcp", "followRedirect": True},
            "streamSettings": {"sockopt": {"tproxy": "tproxy"}},
        }],
        "outbounds": [{
            "tag": "dante", "protocol": "socks",
            "settings": {"servers": [{"address": socks_ip, "port": socks_port}]},
        }],
    }
    return json.dumps(cfg, indent=2) + "\n"


def _syn_counter(match: str) -> str:
    """A rule that counts the connections the next rule takes (their SYNs): the bench checks
    that a peer's block really went through the peer, not straight to the echo server."""
    return f"{match} tcp flags & (syn | ack) == syn counter"


def nft_redsocks(topo: Any, dport: int, port: int = REDSOCKS_PORT) -> str:
    """What MACHINE-NOTES found to work: `redirect` in the gateway's prerouting (dstnat)."""
    match = f'iifname "{topo.gateway_lan_if}" ip daddr {topo.upstream_ip4} tcp dport {dport}'
    return f"""\
table ip bench_redsocks {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        {_syn_counter(match)}
        {match} redirect to :{port}
    }}
}}
"""


def nft_v2ray(topo: Any, dport: int, port: int = V2RAY_PORT, mark: int = V2RAY_MARK) -> str:
    """nft tproxy at prerouting/mangle + `ip rule fwmark 1 lookup 100` (v2ray_policy_route)."""
    match = f'iifname "{topo.gateway_lan_if}" ip daddr {topo.upstream_ip4} tcp dport {dport}'
    return f"""\
table ip bench_v2ray {{
    chain pre {{
        type filter hook prerouting priority mangle; policy accept;
        {_syn_counter(match)}
        {match} meta mark set {mark} tproxy to :{port} accept
    }}
}}
"""


def nft_counted(lab: Any, table: str) -> int:
    """Packets the first counter of `table` counted (the SYN counter: connections taken)."""
    r = lab.run("gateway", ["nft", "-j", "list", "table", "ip", table])
    if r.returncode:
        raise RuntimeError(f"nft list table {table} failed: {r.stderr.strip()}")
    for item in json.loads(r.stdout).get("nftables", []):
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                return int(expr["counter"]["packets"])
    raise RuntimeError(f"no counter in nft table {table}")


def nft(lab: Any, ruleset: str | None = None, delete: str | None = None) -> None:
    if ruleset is not None:
        r = lab.run("gateway", ["nft", "-f", "-"], input=ruleset)
    else:
        r = lab.run("gateway", ["nft", "delete", "table", "ip", str(delete)])
    if r.returncode:
        raise RuntimeError(f"nft failed: {r.stderr.strip()}")


def v2ray_policy_route(lab: Any, add: bool = True) -> None:
    verb = "add" if add else "del"
    for argv in (["ip", "rule", verb, "fwmark", str(V2RAY_MARK), "lookup", str(V2RAY_TABLE)],
                 ["ip", "route", verb, "local", "0.0.0.0/0", "dev", "lo", "table", str(V2RAY_TABLE)]):
        r = lab.run("gateway", argv)
        if r.returncode and add:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def start_tcp_peer(lab: Any, name: str, argv: list[str], port: int, ns: str = "gateway",
                   family: int | None = 4) -> Any:
    """Start a server through the lab's Peer machinery (waits until it listens on `port`)."""
    from dae_py.runtime.lab.peers import Listen, Peer

    peer = Peer(tracker=lab.procs, name=name, ns=lab.ns(ns), argv=argv,
                log_path=lab.dir / f"{name}.log", listens=[Listen("tcp", port, family)], port=port,
                start_timeout=15.0, cwd=lab.dir)
    lab.peers.append(peer)
    return peer.start()


def start_redsocks(lab: Any) -> Any:
    t = lab.topo
    conf = lab.dir / "redsocks.conf"
    conf.write_text(redsocks_config(t.gateway_lan_ip4, t.upstream_ip4, 1080))
    return start_tcp_peer(lab, "redsocks", ["redsocks", "-c", str(conf)], REDSOCKS_PORT)


def start_v2ray(lab: Any) -> Any:
    t = lab.topo
    conf = lab.dir / "v2ray.json"
    conf.write_text(v2ray_config(t.upstream_ip4, 1080))
    # its policy route (fwmark -> local table) is added only while its nft table is (paths.py)
    # Go listens on "0.0.0.0" with a dual-stack AF_INET6 socket
    return start_tcp_peer(lab, "v2ray", ["v2ray", "-config", str(conf)], V2RAY_PORT, family=None)


def start_echo(lab: Any, ports: Sequence[int], ns: str = "upstream") -> Any:
    """Our uvloop TCP echo server (echo_server.py) on `ports`, in `ns`."""
    from dae_py.runtime.lab.peers import Listen, Peer

    argv = [PY, str(HERE / "echo_server.py"), *[str(p) for p in ports]]
    peer = Peer(tracker=lab.procs, name="echo", ns=lab.ns(ns), argv=argv,
                log_path=lab.dir / "echo.log", listens=[Listen("tcp", p, 4) for p in ports],
                port=ports[0], start_timeout=15.0, cwd=lab.dir)
    lab.peers.append(peer)
    return peer.start()


# --- /proc ------------------------------------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, Threads ... of /proc/PID/status, in kB (Threads: count)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def proc_pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def proc_cpu(pid: int) -> float:
    """utime + stime of the whole process (all threads), seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the whole process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def slabinfo() -> dict[str, int]:
    """Bytes per slab cache (active objects x object size) from /proc/slabinfo."""
    out: dict[str, int] = {}
    try:
        lines = Path("/proc/slabinfo").read_text().splitlines()[2:]
    except OSError:
        return out
    for line in lines:
        f = line.split()
        out[f[0]] = int(f[1]) * int(f[3])
    return out


def slab_growth(before: dict[str, int], after: dict[str, int], n: int = 6) -> list[tuple[str, int]]:
    diff = [(k, after.get(k, 0) - before.get(k, 0)) for k in after]
    return sorted(diff, key=lambda kv: -kv[1])[:n]


def tree_pids(pid: int) -> list[int]:
    from dae_py.runtime.lab.procs import descendants

    return [pid, *descendants(pid)]


def tree_cpu(pid: int) -> float:
    """CPU of a process and its live descendants (danted's children come and go: approximate)."""
    total = 0.0
    for p in tree_pids(pid):
        try:
            total += proc_cpu(p)
        except OSError:
            pass
    return total


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, its live descendants and the children it has
    already reaped (cutime, cstime): a relay that forks workers, or danted's short-lived
    io-children, counted whole."""
    user = system = 0.0
    for i, p in enumerate(tree_pids(pid)):
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        user += int(fields[11]) / CLK_TCK
        system += int(fields[12]) / CLK_TCK
        if i == 0:
            user += int(fields[13]) / CLK_TCK
            system += int(fields[14]) / CLK_TCK
    return user, system


def tree_cpu_reaped(pid: int) -> float:
    """tree_cpu plus the CPU of the children `pid` has already reaped (cutime + cstime): for a
    forking server such as danted, whose short-lived children are gone by the time we look."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rfind(")") + 2:].split()
        reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    except OSError:
        reaped = 0.0
    return tree_cpu(pid) + reaped


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def meminfo_kb(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --- reporting --------------------------------------------------------------------------------

def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine_note() -> str:
    load = os.getloadavg()
    return (f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {platform.node()}, "
            f"kernel {platform.release()}, {os.cpu_count()} CPUs, load avg {load[0]:.2f} at start")


def versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    def deb(pkg: str) -> str:
        return first_line(["dpkg-query", "-W", "-f", "${Version}", pkg])

    return {"iperf3": deb("iperf3"), "dante-server": deb("dante-server"),
            "redsocks": deb("redsocks"), "v2ray": deb("v2ray"), "python": platform.python_version()}


# --- profiling (optional) -----------------------------------------------------------------------

def start_pyspy(pyspy: str, pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy record (collapsed stacks, native frames off, sampling at 250 Hz) of `pid`.
    py-spy is not a dependency: pass its path (e.g. from `pip install py-spy` in a scratch venv)."""
    return subprocess.Popen([pyspy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                             "--duration", str(int(seconds)), "--nonblocking", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def start_strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """`strace -c -f -p PID`: syscall counts of a running process (all threads) until SIGINT.
    It slows the traced process a lot: use it for counts, never together with timings."""
    return subprocess.Popen(["strace", "-c", "-f", "-q", "-o", str(out), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def strace_counts(out: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit() and not line.lstrip().startswith("100.00"):
            name = f[-1]
            calls = int(f[3])
            counts[name] = counts.get(name, 0) + calls
    return counts


def top_frames(collapsed: Path, n: int = 12) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """From py-spy's collapsed output: the `n` hottest leaf frames (self time, with line: the
    line that made the syscall) and the `n` hottest functions by inclusive time (a function
    counted once per sample), both as shares of all samples."""
    self_c: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    skip = {"<module>", "_run_module_as_main", "_run_code", "main", "run", "Runner.run", "serve"}
    for line in collapsed.read_text().splitlines():
        stack, _, num = line.rpartition(" ")
        if not num.isdigit():
            continue
        k = int(num)
        frames = stack.split(";")[1:]  # the first entry names the process
        if not frames:
            continue
        total += k
        self_c[frames[-1]] = self_c.get(frames[-1], 0) + k
        funcs = set()
        for f in frames:
            m = re.match(r"(.*?) \((.*?)(?::\d+)?\)$", f)
            name = f"{m.group(1)} ({m.group(2)})" if m else f
            if (m.group(1) if m else f) not in skip:
                funcs.add(name)
        for name in funcs:
            incl[name] = incl.get(name, 0) + k

    def share(d: dict[str, int]) -> list[tuple[float, str]]:
        return [(v / total, key) for key, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]] if total else []

    return share(self_c), share(incl)
