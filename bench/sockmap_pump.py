"""The relay's pumps on loopback TCP pairs, in one process and interleaved rounds: sockmap (the
bounded program as built), sockmap without its backlog bound (RELAY_BACKLOG_MAX at 4 GiB, to see
the kernel path alone), and splice. Then many concurrent sockmap flows, each checksummed.

    .venv/bin/python -m bench.sockmap_pump [--mib 1024] [--rounds 3] [--flows 10000]

Per mode: median Gbit/s of one bulk flow, this process's CPU per GiB (it includes the bench's own
client and server, the same work in every mode) and the machine's busy CPU per GiB (/proc/stat:
adds the kernel's psock workers and softirqs, where sockmap's work goes), plus how many bytes the
kernel redirected and how many passed through user space (the back-pressure path).
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path

from dae_py.compiler.emit import CLANG_FLAGS, SOCKMAP_OBJECT, SOCKMAP_SOURCE, TEMPLATE_DIR, compile_sockmap
from dae_py.runtime.relay.pump import SplicedFlow
from dae_py.runtime.relay.sockmap import U64, SockmapFlow, SockmapPump
from tests.relay.conftest import tcp_pair


def machine_cpu() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / 100.0


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def unbounded_object(out: Path) -> Path:
    """sockmap.c with RELAY_BACKLOG_MAX at 4 GiB - 1: no back-pressure (not for use)."""
    import shutil
    import subprocess

    shutil.copyfile(TEMPLATE_DIR / SOCKMAP_SOURCE, out / SOCKMAP_SOURCE)
    subprocess.run(["clang", *CLANG_FLAGS, "-DRELAY_BACKLOG_MAX=0xffffffffu", "-c", SOCKMAP_SOURCE, "-o",
                    "unbounded.o"], cwd=out, check=True)
    return out / "unbounded.o"


async def bulk(client: socket.socket, server: socket.socket, total: int) -> None:
    loop = asyncio.get_running_loop()
    chunk = b"z" * (1 << 20)

    async def read() -> None:
        n = 0
        while n < total:
            data = await loop.sock_recv(server, 1 << 20)
            if not data:
                raise RuntimeError("EOF before the last byte")
            n += len(data)

    reader = loop.create_task(read())
    for _ in range(total // len(chunk)):
        await loop.sock_sendall(client, chunk)
    await reader


async def one_bulk(mode: str, pumps: dict[str, SockmapPump], total: int) -> tuple[float, float, float, str]:
    loop = asyncio.get_running_loop()
    client, relay_client = tcp_pair(4096)
    relay_upstream, server = tcp_pair(4096)
    def none(n: int) -> None:
        pass

    flow: SockmapFlow | SplicedFlow
    if mode == "splice":
        flow = SplicedFlow(loop, relay_client, relay_upstream, none, none, lambda f, o: None)
    else:
        flow = SockmapFlow(loop, pumps[mode], relay_client, relay_upstream, none, none, lambda f, o: None)
        assert flow.join()
    flow.start()
    t0, p0, m0 = time.perf_counter(), process_cpu(), machine_cpu()
    await bulk(client, server, total)
    dt, p, m = time.perf_counter() - t0, process_cpu() - p0, machine_cpu() - m0
    split = ""
    if isinstance(flow, SockmapFlow):
        redirected, passed = flow.pump.way(U64.unpack(flow.up.key)[0])
        split = f"redirected {redirected >> 20} MiB, passed {passed >> 20} MiB"
    flow.close()
    client.close()
    server.close()
    gib = total / (1 << 30)
    return total * 8 / dt / 1e9, p / gib, m / gib, split


async def many(pump: SockmapPump, flows: int) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    ends: list[tuple[socket.socket, socket.socket, bytes, asyncio.Future[object]]] = []
    for _ in range(flows):
        client, relay_client = tcp_pair(4096)
        relay_upstream, server = tcp_pair(4096)
        done: asyncio.Future[object] = loop.create_future()

        def ended(_flow: SockmapFlow, outcome: object, done: asyncio.Future[object] = done) -> None:
            done.set_result(outcome)

        flow = SockmapFlow(loop, pump, relay_client, relay_upstream, lambda n: None, lambda n: None, ended)
        assert flow.join()
        flow.start()
        ends.append((client, server, os.urandom(16_384), done))

    async def one(client: socket.socket, server: socket.socket, payload: bytes, done: asyncio.Future[object]) -> bool:
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)
        got = bytearray()
        while data := await loop.sock_recv(server, 65536):
            got += data
        server.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(client, 1) == b""
        ok = hashlib.sha256(got).digest() == hashlib.sha256(payload).digest() and await done == "closed"
        client.close()
        server.close()
        return ok

    t0 = time.perf_counter()
    results = await asyncio.gather(*(one(*e) for e in ends))
    return time.perf_counter() - t0, sum(results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flows", type=int, default=10000)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.flows * 4 + 500 > hard:  # four sockets a flow, all in this process
        args.flows = (hard - 500) // 4
        print(f"RLIMIT_NOFILE {hard}: {args.flows} concurrent flows at most")
    build = Path(tempfile.mkdtemp(prefix="sockmap-bench-"))
    compile_sockmap(build)
    pumps = {"sockmap": SockmapPump(str(build / SOCKMAP_OBJECT)),
             "sockmap, unbounded": SockmapPump(str(unbounded_object(build)))}
    modes = ("sockmap", "sockmap, unbounded", "splice")
    rows: dict[str, list[tuple[float, float, float, str]]] = {m: [] for m in modes}
    try:
        for _ in range(args.rounds):
            for mode in modes:
                rows[mode].append(asyncio.run(one_bulk(mode, pumps, args.mib << 20)))
        print(f"one bulk flow of {args.mib} MiB, median of {args.rounds} interleaved rounds:")
        for mode, runs in rows.items():
            print(f"  {mode:20s} {statistics.median(r[0] for r in runs):5.2f} Gbit/s "
                  f"({', '.join(f'{r[0]:.2f}' for r in runs)})  process {statistics.median(r[1] for r in runs):.2f} "
                  f"s/GiB  machine {statistics.median(r[2] for r in runs):.2f} s/GiB  {runs[-1][3]}")
        took, ok = asyncio.run(many(pumps["sockmap"], args.flows))
        print(f"{args.flows} concurrent sockmap flows, 16 KiB each way up: {ok} checksummed whole in {took:.2f} s; "
              f"map entries left {pumps['sockmap'].entries()}")
    finally:
        for pump in pumps.values():
            pump.close()


if __name__ == "__main__":
    main()
