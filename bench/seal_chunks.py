"""Shadowsocks chunk sealing: the shared runtime/proxy/aeadchunks.seal_chunks against the two
loops it replaced (copied here as the baseline), in the same run: microseconds per seal().

    .venv/bin/python -m bench.seal_chunks
"""
from __future__ import annotations

import os
import statistics
import struct
import timeit
from collections.abc import Callable
from functools import partial

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dae_py.runtime.proxy import shadowsocks2022 as ss2022
from dae_py.runtime.proxy.aeadchunks import seal_chunks

AEAD = AESGCM(os.urandom(16))
SS_MAX = 0x3FFF  # SIP004's largest payload per chunk
SS2022_MAX = 0xFFFF  # SIP022's


def old_ss(data: memoryview) -> bytes:
    """shadowsocks.Sealer.seal before 05aad72."""
    encrypt = AEAD.encrypt
    out = []
    n = 0
    for start in range(0, len(data), SS_MAX):
        piece = data[start:start + SS_MAX]
        out.append(encrypt(n.to_bytes(12, "little"), struct.pack("!H", len(piece)), None))
        out.append(encrypt((n + 1).to_bytes(12, "little"), piece, None))
        n += 2
    return b"".join(out)


def old_ss2022(data: memoryview) -> bytes:
    """shadowsocks2022.Sealer.seal before 05aad72 (one _enc call per unit)."""
    out = []
    n = 0
    for start in range(0, len(data), SS2022_MAX):
        piece = data[start:start + SS2022_MAX]
        for unit in (struct.pack("!H", len(piece)), piece):
            out.append(AEAD.encrypt(ss2022.nonce(n), unit, None))
            n += 1
    return b"".join(out)


def per_call_us(f: Callable[[], object], number: int = 2000) -> float:
    return statistics.median(min(timeit.repeat(f, number=number, repeat=5)) / number * 1e6 for _ in range(3))


def main() -> None:
    for size in (1400, 65536):
        data = memoryview(os.urandom(size))
        res = {
            "ss old": per_call_us(partial(old_ss, data)),
            "ss new": per_call_us(partial(seal_chunks, AEAD, 0, data, SS_MAX)),
            "2022 old": per_call_us(partial(old_ss2022, data)),
            "2022 new": per_call_us(partial(seal_chunks, AEAD, 0, data, SS2022_MAX)),
        }
        shown = ", ".join(f"{k} {v:.2f}" for k, v in res.items())
        print(f"{size} B: {shown} us; ss new/old {res['ss new'] / res['ss old']:.3f}, "
              f"2022 new/old {res['2022 new'] / res['2022 old']:.3f}")


if __name__ == "__main__":
    main()
