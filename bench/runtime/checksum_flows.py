"""Many concurrent TCP flows, each echoing a checksummed payload (client namespace; stdlib only).

    python checksum_flows.py HOST PORT --flows 10000 --bytes 8192 [--inflight 1000]

Opens `--flows` connections (at most `--inflight` connecting at a time) and keeps every one of
them open until all are done: the flows are concurrent. Each sends `--bytes` of its own
pseudo-random payload and reads the echo back; a flow is ok when the echo's SHA-256 equals the
payload's. One JSON line: {"flows", "ok", "mismatch", "failed": {why: n}, "max_open", "seconds"}.
"""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import random
import resource
import select
import socket
import sys
import time


class Flow:
    __slots__ = ("digest", "got", "hasher", "out", "sock", "state")

    def __init__(self, sock: socket.socket, payload: bytes) -> None:
        self.sock = sock
        self.out = memoryview(payload)
        self.digest = hashlib.sha256(payload).digest()
        self.hasher = hashlib.sha256()
        self.got = 0
        self.state = "connecting"


def run(host: str, port: int, n: int, size: int, inflight: int, timeout: float) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(15)
    ep = select.epoll()
    flows: dict[int, Flow] = {}
    failed: dict[str, int] = {}
    ok = mismatch = started = connecting = max_open = 0
    done: list[socket.socket] = []  # finished flows stay open until every flow has finished
    t0 = time.monotonic()
    deadline = t0 + timeout

    def fail(fd: int, why: str) -> None:
        nonlocal connecting
        f = flows.pop(fd)
        if f.state == "connecting":
            connecting -= 1
        ep.unregister(fd)
        f.sock.close()
        failed[why] = failed.get(why, 0) + 1

    while (started < n or flows) and time.monotonic() < deadline:
        while started < n and connecting < inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                failed[errno.errorcode.get(rc, str(rc))] = failed.get(errno.errorcode.get(rc, str(rc)), 0) + 1
                continue
            flows[s.fileno()] = Flow(s, rng.randbytes(size))
            connecting += 1
            ep.register(s.fileno(), select.EPOLLOUT)
        max_open = max(max_open, len(flows) + len(done))
        for fd, ev in ep.poll(0.2):
            f = flows.get(fd)
            if f is None:
                continue
            if f.state == "connecting":
                err = f.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    fail(fd, errno.errorcode.get(err, str(err)))
                    continue
                f.state = "sending"
                connecting -= 1
                ep.modify(fd, select.EPOLLOUT | select.EPOLLIN)
                ev = select.EPOLLOUT | select.EPOLLIN
            try:
                if ev & select.EPOLLOUT and f.out:
                    sent = f.sock.send(f.out)
                    f.out = f.out[sent:]
                    if not f.out:
                        ep.modify(fd, select.EPOLLIN)
                if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                    data = f.sock.recv(65536)
                    if not data:
                        fail(fd, "closed early")
                        continue
                    f.hasher.update(data)
                    f.got += len(data)
            except BlockingIOError:
                continue
            except OSError as exc:
                fail(fd, errno.errorcode.get(exc.errno or 0, str(exc)))
                continue
            if f.got >= size:
                if f.got == size and f.hasher.digest() == f.digest:
                    ok += 1
                else:
                    mismatch += 1
                ep.unregister(fd)
                del flows[fd]
                done.append(f.sock)
    for f in flows.values():
        failed["timeout"] = failed.get("timeout", 0) + 1
        f.sock.close()
    for s in done:
        s.close()
    return {"flows": n, "ok": ok, "mismatch": mismatch, "failed": failed, "max_open": max_open,
            "seconds": round(time.monotonic() - t0, 2)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--flows", type=int, default=10000)
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--inflight", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args()
    print(json.dumps(run(a.host, a.port, a.flows, a.bytes, a.inflight, a.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
