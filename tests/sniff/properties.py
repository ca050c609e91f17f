"""The sniffers' one promise, as properties shared by the CI test (a small budget) and the long
campaign (bench/fuzz_sniff.py): whatever the bytes, a sniffer answers a name, NEED_MORE or NO,
and never raises. The inputs start from real ones (a ClientHello, a QUIC Initial, an HTTP
request) cut, flipped and extended, since those reach the parsers' deep paths that random bytes
do not."""
from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from dae_py.runtime.sniff import NEED_MORE, NO, http, quic, sniff_stream, tls, valid_name
from tests.sniff.hellos import crypto_frame, handshake_message, python_hello, rerecord, seal_initial

HELLO = python_hello("fuzz.example.test", alpn=("h2", "http/1.1"))
HELLO_RECORDS = rerecord(HELLO, 50)
REQUEST = b"GET /p HTTP/1.1\r\nHost: fuzz.example.test:80\r\nAccept: */*\r\n\r\n"
DCID = bytes(range(8))
INITIAL = seal_initial(crypto_frame(0, handshake_message(HELLO)), DCID)
SEEDS = (HELLO, HELLO_RECORDS, REQUEST, INITIAL)


def mutate(seed: bytes, cut: int, flips: list[tuple[int, int]], extra: bytes) -> bytes:
    out = bytearray(seed[:cut])
    for pos, mask in flips:
        if out:
            out[pos % len(out)] ^= mask
    return bytes(out) + extra


mutated = st.builds(mutate, st.sampled_from(SEEDS), st.integers(0, 1300),
                    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(1, 255)), max_size=4),
                    st.binary(max_size=64))
huge = st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 40_000))
stream_inputs = st.one_of(st.binary(max_size=2000), mutated, huge)
datagram_lists = st.lists(st.one_of(st.binary(max_size=1400), mutated), max_size=5)


def check_answer(answer: object) -> None:
    assert answer is NEED_MORE or answer is NO or (isinstance(answer, str) and valid_name(answer) == answer), answer


def check_stream(data: bytes) -> None:
    for sniffer in (tls.sniff, http.sniff, sniff_stream):
        check_answer(sniffer(data))


def check_datagrams(datagrams: Sequence[bytes]) -> None:
    check_answer(quic.sniff(list(datagrams)))
