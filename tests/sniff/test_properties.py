"""Garbage, truncated and huge inputs never make a sniffer raise (a small hypothesis budget
here; bench/fuzz_sniff.py runs the long campaign)."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.sniff.properties import check_datagrams, check_stream, datagram_lists, stream_inputs

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@BUDGET
@given(stream_inputs)
def test_stream_sniffers_answer_and_never_raise(data: bytes) -> None:
    check_stream(data)


@BUDGET
@given(datagram_lists)
def test_quic_sniffer_answers_and_never_raises(datagrams: list[bytes]) -> None:
    check_datagrams(datagrams)


def test_every_prefix_of_real_inputs_answers() -> None:
    from tests.sniff.properties import HELLO_RECORDS, INITIAL, REQUEST

    for seed in (HELLO_RECORDS, REQUEST):
        for cut in range(len(seed) + 1):
            check_stream(seed[:cut])
    for cut in range(0, len(INITIAL) + 1, 7):
        check_datagrams([INITIAL[:cut]])
