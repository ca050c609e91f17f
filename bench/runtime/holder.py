"""Opens and holds many idle TCP connections (runs inside the client namespace; stdlib only).

    python holder.py HOST PORT [--inflight 200]

Commands on stdin, one per line; each answers one JSON line on stdout:
  open N   open N more connections; each sends one byte and counts as up once that byte
           comes back (so the whole proxied path exists), then stays idle.
           -> {"up": total up, "failed": {...}, "seconds": s}
  close    close every connection -> {"closed": n}
EOF at stdin closes everything and exits.
"""
from __future__ import annotations

import argparse
import errno
import json
import select
import socket
import sys
import time


def open_more(host: str, port: int, n: int, inflight: int, held: list[socket.socket],
              failed: dict[str, int], timeout: float = 30.0) -> None:
    ep = select.epoll()
    pending: dict[int, tuple[socket.socket, int, float]] = {}  # fd -> (sock, state, t0)
    started = 0

    def fail(fd: int, what: str) -> None:
        s = pending.pop(fd)[0]
        ep.unregister(fd)
        s.close()
        failed[what] = failed.get(what, 0) + 1

    while started < n or pending:
        while started < n and len(pending) < inflight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            started += 1
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                failed[errno.errorcode.get(rc, str(rc))] = failed.get(errno.errorcode.get(rc, str(rc)), 0) + 1
                s.close()
                continue
            pending[s.fileno()] = (s, 0, time.monotonic())
            ep.register(s.fileno(), select.EPOLLOUT)
        for fd, _ in ep.poll(0.5):
            if fd not in pending:
                continue
            s, state, t0 = pending[fd]
            try:
                if state == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(fd, errno.errorcode.get(err, str(err)))
                        continue
                    s.send(b"x")
                    pending[fd] = (s, 1, t0)
                    ep.modify(fd, select.EPOLLIN)
                else:
                    data = s.recv(16)
                    if not data:
                        fail(fd, "closed")
                        continue
                    ep.unregister(fd)
                    del pending[fd]
                    held.append(s)
            except OSError as exc:
                fail(fd, errno.errorcode.get(exc.errno or 0, str(exc)))
        now = time.monotonic()
        for fd in [fd for fd, (_, _, t0) in pending.items() if now - t0 > timeout]:
            fail(fd, "timeout")
    ep.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--inflight", type=int, default=200)
    args = ap.parse_args()
    held: list[socket.socket] = []
    failed: dict[str, int] = {}
    for line in sys.stdin:
        cmd = line.split()
        if not cmd:
            continue
        if cmd[0] == "open":
            t0 = time.monotonic()
            open_more(args.host, args.port, int(cmd[1]), args.inflight, held, failed)
            print(json.dumps({"up": len(held), "failed": failed, "seconds": time.monotonic() - t0}), flush=True)
        elif cmd[0] == "close":
            n = len(held)
            for s in held:
                s.close()
            held.clear()
            print(json.dumps({"closed": n}), flush=True)
    for s in held:
        s.close()


if __name__ == "__main__":
    main()
