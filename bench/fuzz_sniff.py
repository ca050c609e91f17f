"""A coverage-guided fuzz campaign (atheris, libFuzzer) on the sniffers: no exception, bounded time.

    .venv/bin/pip install -e '.[fuzz]'    # atheris
    .venv/bin/python -m bench.fuzz_sniff [--seconds 600] [--corpus DIR] [-- LIBFUZZER_FLAGS...]

Each input drives one sniffer, chosen by its first byte: tls.sniff, http.sniff, sniff_stream on
the rest as a stream, or quic.sniff on the rest cut into datagrams (a 2-byte length before each).
A sniffer may answer a valid name, NEED_MORE or NO; anything else (an exception, another value)
is a crash that libFuzzer reports with the input saved. The corpus starts from real inputs
(tests/sniff/properties.SEEDS: a ClientHello as one and as many records, an HTTP request, a QUIC
Initial), so the fuzzer begins deep in the parsers; QUIC inputs that do not decrypt stop at the
AEAD tag, which is what a flood of garbage Initials costs the relay too. libFuzzer's own lines
are the figures: `cov:` (edges reached), executions, executions per second, slowest input, peak
RSS (-print_final_stats).
"""
from __future__ import annotations

import argparse
import struct
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from dae_py.runtime.sniff import NEED_MORE, NO, http, quic, sniff_stream, tls, valid_name

def datagrams(data: bytes) -> list[bytes]:
    out: list[bytes] = []
    pos = 0
    while pos + 2 <= len(data) and len(out) < 20:
        (n,) = struct.unpack_from("!H", data, pos)
        out.append(data[pos + 2:pos + 2 + n])
        pos += 2 + n
    return out


def one_input(data: bytes) -> None:
    if not data:
        return
    kind, rest = data[0] % 4, data[1:]
    if kind == 0:
        answer = tls.sniff(rest)
    elif kind == 1:
        answer = http.sniff(rest)
    elif kind == 2:
        answer = sniff_stream(rest)
    else:
        answer = quic.sniff(datagrams(rest))
    if not (answer is NEED_MORE or answer is NO or (isinstance(answer, str) and valid_name(answer) == answer)):
        raise AssertionError(f"sniffer answered {answer!r}")


def write_seeds(directory: Path) -> None:
    from tests.sniff.properties import HELLO, HELLO_RECORDS, INITIAL, REQUEST

    for i, (kind, seed) in enumerate(((0, HELLO), (0, HELLO_RECORDS), (1, REQUEST), (2, HELLO), (2, REQUEST),
                                      (3, struct.pack("!H", len(INITIAL)) + INITIAL))):
        (directory / f"seed-{i}").write_bytes(bytes([kind]) + seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=int, default=600)
    ap.add_argument("--corpus", type=Path, help="corpus folder (default: a temporary one with the seeds)")
    ap.add_argument("libfuzzer", nargs="*", help="more libFuzzer flags, after --")
    args = ap.parse_args()
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="fuzz-sniff-"))
    corpus.mkdir(parents=True, exist_ok=True)
    write_seeds(corpus)
    argv = [sys.argv[0], str(corpus), f"-max_total_time={args.seconds}", "-print_final_stats=1",
            "-max_len=8192", *args.libfuzzer]
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
