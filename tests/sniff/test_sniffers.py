"""The sniffers on real inputs: RFC 9001's client Initial, ClientHellos from Python's ssl,
openssl s_client and curl (whole, cut into TCP segments, re-cut into many TLS records), HTTP/1
requests, and QUIC Initials sealed around real hellos (v1, v2, several packets, CRYPTO frames
out of order, coalesced packets)."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from dae_py.runtime.sniff import NEED_MORE, NO, http, quic, sniff_stream, tls, valid_name
from tests.sniff.hellos import (
    crypto_frame,
    curl_hello,
    handshake_message,
    openssl_hello,
    python_hello,
    rerecord,
    seal_initial,
)

RFC9001_A2 = bytes.fromhex(Path(__file__).with_name("rfc9001_a2_client_initial.hex").read_text().replace("\n", ""))


def test_rfc9001_appendix_a_client_initial_decodes_to_its_sni() -> None:
    assert len(RFC9001_A2) == 1200
    assert quic.looks_like_initial(RFC9001_A2)
    assert quic.sniff([RFC9001_A2]) == "example.com"


def test_rfc9001_vector_with_a_flipped_bit_is_no() -> None:
    for i in (0, 30, 600, 1199):  # header, protected payload, tag
        bad = bytearray(RFC9001_A2)
        bad[i] ^= 0x04
        assert quic.sniff([bytes(bad)]) is NO, i


@pytest.mark.parametrize("make", [python_hello, openssl_hello, curl_hello], ids=["python-ssl", "openssl", "curl"])
def test_real_client_hellos_give_their_server_name(make: Callable[[str], bytes]) -> None:
    hello = make("Www.Example-1.test")
    assert hello[:1] == b"\x16"
    assert tls.sniff(hello) == "www.example-1.test"
    assert sniff_stream(hello) == "www.example-1.test"


def test_hello_in_tcp_segments_needs_more_until_complete() -> None:
    hello = python_hello("split.example.test", alpn=("h2", "http/1.1"))
    for cut in (1, 3, 5, 6, 40, len(hello) // 2, len(hello) - 1):
        assert tls.sniff(hello[:cut]) is NEED_MORE, cut
    assert tls.sniff(hello) == "split.example.test"
    assert tls.sniff(hello + os.urandom(100)) == "split.example.test"  # early data after it: fine


@pytest.mark.parametrize("size", [1, 7, 64, 300])
def test_hello_across_many_tls_records(size: int) -> None:
    hello = rerecord(python_hello("records.example.test"), size)
    assert hello.count(b"\x16\x03\x01") >= len(handshake_message(hello)) // size
    assert tls.sniff(hello) == "records.example.test"
    assert tls.sniff(hello[:-1]) is NEED_MORE


def test_hello_without_sni_and_non_tls_are_no() -> None:
    assert tls.sniff(python_hello(None)) is NO
    assert tls.sniff(b"\x17\x03\x03\x00\x10" + bytes(16)) is NO  # application data
    assert tls.sniff(b"\x16\x03\x03\x00\x04\x02\x00\x00\x00") is NO  # a ServerHello
    assert tls.sniff(b"\x16\x03\x01\xff\xff") is NO  # a record longer than TLS allows
    assert tls.sniff(b"SSH-2.0-OpenSSH_9.2\r\n") is NO
    assert tls.sniff(b"") is NEED_MORE and tls.sniff(b"\x16") is NEED_MORE and tls.sniff(b"\x16\x04") is NO


def test_sni_that_is_not_a_host_name_is_no() -> None:
    hello = python_hello("abcdefgh.test")
    for bad in (b"a..defgh.test", b"a b/efgh.test", b"abcd\xffefg.test", b"100.200.30.40", b"abcdefgh.tes\x00"):
        assert len(bad) == 13
        assert tls.sniff(hello.replace(b"abcdefgh.test", bad)) is NO, bad
    assert tls.sniff(python_hello("1.2.3.4")) is NO  # Python sends no SNI for an address
    assert tls.sniff(python_hello("ex\u00e4mple.test")) == "xn--exmple-cua.test"  # IDNA A-label


def test_http_host_header() -> None:
    req = b"GET /x HTTP/1.1\r\nUser-Agent: t\r\nHOST:  Api.Example.test:8080 \r\nAccept: */*\r\n\r\n"
    assert http.sniff(req) == "api.example.test"
    assert sniff_stream(req) == "api.example.test"
    for cut in (0, 1, 3, 4, 10, req.index(b"HOST"), req.index(b"8080")):
        assert http.sniff(req[:cut]) is NEED_MORE, cut
    assert http.sniff(b"POST / HTTP/1.0\r\nHost: p.test\r\n\r\nbody") == "p.test"
    assert http.sniff(b"GET http://abs.example.test/p HTTP/1.1\r\nAccept: x\r\n\r\n") == "abs.example.test"


def test_http_without_a_usable_host_is_no() -> None:
    assert http.sniff(b"GET / HTTP/1.1\r\nAccept: x\r\n\r\n") is NO
    assert http.sniff(b"GET / HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n") is NO
    assert http.sniff(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n") is NO
    assert http.sniff(b"GET / HTTP/1.1\r\nHost: a.test:x\r\n\r\n") is NO
    assert http.sniff(b"FOO / HTTP/1.1\r\nHost: a.test\r\n\r\n") is NO
    assert http.sniff(b"GET / SPDY/3\r\nHost: a.test\r\n\r\n") is NO
    assert http.sniff(b"\x00\x01binary") is NO
    assert http.sniff(b"GET " + b"a" * (http.MAX_HEAD + 10)) is NO  # never NEED_MORE past the bound


def test_valid_name() -> None:
    assert valid_name(b"A.B-c_d.test.") == "a.b-c_d.test"
    assert valid_name("") is None and valid_name(".") is None and valid_name(b"\xff.test") is None
    assert valid_name("::1") is None and valid_name("a" * 63 + ".t") is not None and valid_name("a" * 64) is None


# --- QUIC ------------------------------------------------------------------------------


DCID = bytes.fromhex("0011223344556677")


@pytest.mark.parametrize("version", [quic.V1, quic.V2], ids=["v1", "v2"])
def test_quic_initial_with_a_real_hello(version: int) -> None:
    msg = handshake_message(python_hello("quic.example.test", alpn=("h3",)))
    pkt = seal_initial(crypto_frame(0, msg), DCID, version=version)
    assert len(pkt) == 1200 and quic.looks_like_initial(pkt)
    assert quic.sniff([pkt]) == "quic.example.test"


def test_quic_hello_over_several_packets_and_frames_out_of_order() -> None:
    msg = handshake_message(python_hello("multi.example.test", alpn=("h3",)))
    a, b, c = msg[:100], msg[100:300], msg[300:]
    # packet 1 carries the end and the middle (in that order), packet 2 the start
    p1 = seal_initial(crypto_frame(300, c) + b"\x01" + crypto_frame(100, b), DCID, pn=0)
    p2 = seal_initial(crypto_frame(0, a), DCID, pn=1)
    assert quic.sniff([p1]) is NEED_MORE
    assert quic.sniff([p1, p2]) == "multi.example.test"
    assert quic.sniff([p2, p1]) == "multi.example.test"
    assert quic.sniff([p2]) is NEED_MORE  # the start alone: the hello's length says more comes


def test_quic_coalesced_initial_then_other_packets_and_padding() -> None:
    msg = handshake_message(python_hello("coalesced.example.test"))
    pkt = seal_initial(crypto_frame(0, msg), DCID, pad_to=0)
    zero_rtt = bytes([0xD0 | 1]) + quic.V1.to_bytes(4, "big") + bytes([8]) + DCID + b"\x00" + b"\x40\x20" + bytes(32)
    assert quic.sniff([pkt + zero_rtt + bytes(200)]) == "coalesced.example.test"


def test_quic_non_initial_and_garbage_are_no() -> None:
    assert quic.sniff([]) is NO
    assert quic.sniff([b"\x40" + os.urandom(50)]) is NO  # a short header
    assert quic.sniff([os.urandom(1200)]) in (NO, NEED_MORE)
    other_version = bytearray(RFC9001_A2)
    other_version[1:5] = b"\xff\x00\x00\x1d"  # a draft version: keys unknown
    assert quic.sniff([bytes(other_version)]) is NO
    ping_only = seal_initial(b"\x01", DCID)
    assert quic.sniff([ping_only]) is NEED_MORE
    stream_frame = seal_initial(b"\x08\x00\x01x", DCID)  # a STREAM frame has no place in an Initial
    assert quic.sniff([stream_frame]) is NO
