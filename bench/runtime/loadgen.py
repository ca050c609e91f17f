"""Open-loop TCP connection generator (runs inside the client namespace; stdlib only).

    python loadgen.py < plan.json > result.json

plan: {"rate": 1000, "timeout": 3.0, "payload": 16,
       "blocks": [{"mode": "direct", "host": H, "port": P, "count": N, "record": true,
                   "socks": null | [SOCKS_HOST, SOCKS_PORT]}, ...]}

Each connection: non-blocking connect, then (for a "socks" block, a SOCKS5 no-auth CONNECT to
host:port first) send `payload` bytes, wait for the echo's first byte, close. Time to first byte
= from the connect() call to the first echoed byte, in microseconds (perf_counter_ns).
Connections start on a fixed schedule (i / rate after the block's start) whatever the earlier
ones do (open loop), one epoll loop, no threads. Blocks run one after another; between blocks
the generator waits for the stragglers and pauses 100 ms.
result: {"ttfb_us": {mode: [...]}, "connect_us": {mode: [...]}, "errors": {mode: {what: n}},
         "late_p99_us": {mode: p99 of start lateness}, "block_s": {mode: [seconds per block]}}
(a block of N connections at rate R takes N/R seconds when every connection completes quickly;
longer means the path under test could not keep up with the rate)
"""
from __future__ import annotations

import errno
import json
import select
import socket
import struct
import sys
import time

CONNECTING, GREETING, REQUESTING, ECHO = range(4)


def run(plan: dict) -> dict:
    rate = float(plan["rate"])
    timeout_ns = int(float(plan.get("timeout", 3.0)) * 1e9)
    payload = b"p" * int(plan.get("payload", 16))
    ep = select.epoll()
    ttfb: dict[str, list[float]] = {}
    conn_t: dict[str, list[float]] = {}
    errors: dict[str, dict[str, int]] = {}
    late: dict[str, list[float]] = {}
    block_s: dict[str, list[float]] = {}
    now = time.perf_counter_ns

    for block in plan["blocks"]:
        mode = block["mode"]
        record = block.get("record", True)
        target = (block["host"], int(block["port"]))
        socks = tuple(block["socks"]) if block.get("socks") else None
        dial = (socks[0], int(socks[1])) if socks else target
        request = (b"\x05\x01\x00\x01" + socket.inet_aton(target[0]) + struct.pack("!H", target[1])
                   if socks else b"")
        out_ttfb = ttfb.setdefault(mode, []) if record else []
        out_conn = conn_t.setdefault(mode, []) if record else []
        out_late = late.setdefault(mode, []) if record else []
        errs = errors.setdefault(mode, {}) if record else {}
        live: dict[int, list] = {}  # fd -> [sock, state, t0, buf]

        # Both run only within this block's pass of the loop; the defaults bind that pass's dicts (B023).
        def fail(fd: int, what: str, errs: dict[str, int] = errs) -> None:
            errs[what] = errs.get(what, 0) + 1
            finish(fd)

        def finish(fd: int, live: dict[int, list] = live) -> None:
            entry = live.pop(fd)
            try:
                ep.unregister(fd)
            except OSError:
                pass
            entry[0].close()

        count = int(block["count"])
        started = 0
        interval = 1e9 / rate
        t_block = now()
        while started < count or live:
            t = now()
            while started < count and t >= t_block + started * interval:
                out_late.append((t - (t_block + started * interval)) / 1000)
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                t0 = now()
                rc = s.connect_ex(dial)
                started += 1
                if rc not in (0, errno.EINPROGRESS):
                    errs[errno.errorcode.get(rc, str(rc))] = errs.get(errno.errorcode.get(rc, str(rc)), 0) + 1
                    s.close()
                    continue
                live[s.fileno()] = [s, CONNECTING, t0, b""]
                ep.register(s.fileno(), select.EPOLLOUT)
                t = now()
            if started < count:
                wait = max(0.0, (t_block + started * interval - now()) / 1e9)
            else:
                wait = 0.05
            for fd, _ev in ep.poll(wait):
                entry = live.get(fd)
                if entry is None:
                    continue
                s, state, t0, buf = entry
                try:
                    if state == CONNECTING:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            fail(fd, errno.errorcode.get(err, str(err)))
                            continue
                        out_conn.append((now() - t0) / 1000)
                        if socks:
                            s.send(b"\x05\x01\x00")
                            entry[1] = GREETING
                        else:
                            s.send(payload)
                            entry[1] = ECHO
                        ep.modify(fd, select.EPOLLIN)
                    elif state == ECHO:
                        data = s.recv(65536)
                        if not data:
                            fail(fd, "closed before the echo")
                            continue
                        out_ttfb.append((now() - t0) / 1000)
                        finish(fd)
                    else:
                        data = s.recv(64)
                        if not data:
                            fail(fd, "socks: closed")
                            continue
                        buf += data
                        entry[3] = buf
                        if state == GREETING and len(buf) >= 2:
                            if buf[:2] != b"\x05\x00":
                                fail(fd, "socks: method refused")
                                continue
                            entry[3] = buf[2:]
                            entry[1] = REQUESTING
                            s.send(request)
                        elif state == REQUESTING and len(buf) >= 10:
                            if buf[1] != 0:
                                fail(fd, f"socks: reply {buf[1]}")
                                continue
                            entry[1] = ECHO
                            s.send(payload)
                except OSError as exc:
                    fail(fd, errno.errorcode.get(exc.errno or 0, str(exc)))
            t = now()
            for fd in [fd for fd, e in live.items() if t - e[2] > timeout_ns]:
                fail(fd, "timeout")
        if record:
            block_s.setdefault(mode, []).append((now() - t_block) / 1e9)
        time.sleep(0.1)
    ep.close()

    def p99(v: list[float]) -> float:
        return sorted(v)[int(len(v) * 0.99)] if v else 0.0

    return {"ttfb_us": ttfb, "connect_us": conn_t, "errors": errors,
            "late_p99_us": {m: p99(v) for m, v in late.items()}, "block_s": block_s}


if __name__ == "__main__":
    json.dump(run(json.load(sys.stdin)), sys.stdout)
