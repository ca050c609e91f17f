"""Tests for compiler.geodata: the v2ray geoip.dat / geosite.dat codec.

The hand-built byte strings below are written from the protobuf encoding spec and
v2ray's config.proto, not from the encoder, so the encoder is not only checked
against its own decoder.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network
from pathlib import Path

import pytest

from dae_py.compiler.geodata import (
    Attrs,
    GeoDataError,
    GeoIP,
    SiteDomain,
    encode_geoip,
    encode_geosite,
    filter_attr,
    list_tags,
    read_geoip,
    read_geosite,
    write_geoip,
    write_geosite,
)


def key(field: int, wire: int) -> bytes:
    """A one-byte field key, written out from the spec: (field << 3) | wire type."""
    assert field < 16
    return bytes([field << 3 | wire])


def uvarint(n: int) -> bytes:
    """Base-128 varint, least significant group first, high bit = "more bytes follow" (the spec)."""
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([low])
        out += bytes([low | 0x80])


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field: key, varint length, payload."""
    return key(field, 2) + uvarint(len(payload)) + payload


def put(tmp_path: Path, data: bytes, name: str = "x.dat") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.fixture
def sites() -> dict[str, list[SiteDomain]]:
    return {
        "cn": [
            SiteDomain("domain", "baidu.com"),
            SiteDomain("full", "www.qq.com", {"ads": True}),
            SiteDomain("plain", "taobao", {"cn": True, "weight": 3}),
            SiteDomain("regex", r"^ad[0-9]+\.example\.cn$", {"ads": True, "cn": True}),
        ],
        "google": [
            SiteDomain("domain", "google.com"),
            SiteDomain("domain", "google.cn", {"cn": True}),
            SiteDomain("full", "ads.google.com", {"ads": True, "!cn": True}),
            SiteDomain("domain", "googleapis.cn", {"!cn": True}),
        ],
        "geolocation-cn": [SiteDomain("domain", "example.cn")],
        "geolocation-!cn": [SiteDomain("domain", "example.com")],
    }


# --------------------------------------------------------------------------- geoip


def test_geoip_round_trip_v4_v6_and_non_canonical(tmp_path: Path) -> None:
    path = tmp_path / "geoip.dat"
    write_geoip(
        path,
        {
            "CN": ["1.0.1.0/24", "10.1.2.3/8", "2001:db8::1/32", IPv4Network("192.168.0.0/16"), "8.8.8.8", "0.0.0.0/0"],
            "private": [IPv4Address("127.0.0.1"), "fc00::/7", "::1"],
        },
        reverse=["private"],
    )
    got = read_geoip(path)
    assert set(got) == {"cn", "private"}
    assert got["cn"] == GeoIP(
        "cn",
        tuple(
            ip_network(n)
            for n in ["1.0.1.0/24", "10.0.0.0/8", "2001:db8::/32", "192.168.0.0/16", "8.8.8.8/32", "0.0.0.0/0"]
        ),
        False,
    )
    assert [str(n) for n in got["private"].networks] == ["127.0.0.1/32", "fc00::/7", "::1/128"]
    assert got["private"].reverse_match is True
    assert isinstance(got["cn"].networks[2], IPv6Network)


def test_geoip_reverse_true_applies_to_all(tmp_path: Path) -> None:
    path = tmp_path / "geoip.dat"
    write_geoip(path, {"a": ["1.2.3.0/24"], "b": ["::/0"]}, reverse=True)
    assert all(g.reverse_match for g in read_geoip(path).values())


def test_geoip_encoding_matches_spec_byte_for_byte() -> None:
    # GeoIPList { entry(1) = GeoIP { country_code(1) = "CN"; cidr(2) = CIDR { ip(1); prefix(2) }...;
    #                                reverse_match(3) = true } }
    cidr_v4 = ld(1, bytes([10, 0, 0, 0])) + key(2, 0) + bytes([8])  # 10.1.2.3/8, host bits masked
    cidr_v6 = ld(1, bytes.fromhex("20010db8" + "00" * 12)) + key(2, 0) + bytes([32])
    cidr_any = ld(1, bytes(4))  # 0.0.0.0/0: proto3 omits prefix = 0
    geoip = ld(1, b"CN") + ld(2, cidr_v4) + ld(2, cidr_v6) + ld(2, cidr_any) + key(3, 0) + b"\x01"
    expected = ld(1, geoip)
    assert expected[:4] == b"\x0a\x2e\x0a\x02"  # spot-check the arithmetic: 4 + 10 + 22 + 8 + 2 = 46
    assert encode_geoip({"cn": ["10.1.2.3/8", "2001:db8::/32", "0.0.0.0/0"]}, reverse=True) == expected


def test_geoip_reader_masks_host_bits_in_file(tmp_path: Path) -> None:
    # A file (not from our writer) whose CIDR keeps host bits: 10.1.2.3/8, and fields in reverse order.
    cidr = key(2, 0) + bytes([8]) + ld(1, bytes([10, 1, 2, 3]))
    path = put(tmp_path, ld(1, ld(2, cidr) + ld(1, b"XX")))
    assert read_geoip(path)["xx"].networks == (IPv4Network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("cidr", "message"),
    [
        (ld(1, bytes(5)) + key(2, 0) + b"\x08", "5 bytes"),
        (ld(1, bytes(4)) + key(2, 0) + b"\x21", "prefix length 33"),
        (ld(1, bytes(16)) + key(2, 0) + b"\x81\x01", "prefix length 129"),
        (key(2, 0) + b"\x08", "0 bytes"),
    ],
)
def test_geoip_bad_cidr_is_reported(tmp_path: Path, cidr: bytes, message: str) -> None:
    path = put(tmp_path, ld(1, ld(1, b"CN") + ld(2, cidr)), "geoip.dat")
    with pytest.raises(GeoDataError, match=message) as exc:
        read_geoip(path, ["cn"])
    assert "geoip.dat" in str(exc.value) and "'cn'" in str(exc.value)


def test_geoip_writer_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(GeoDataError, match="bad CIDR '10.0.0.0/33'"):
        write_geoip(tmp_path / "g.dat", {"cn": ["10.0.0.0/33"]})
    with pytest.raises(GeoDataError, match="given twice"):
        write_geoip(tmp_path / "g.dat", {"cn": [], "CN": []})
    with pytest.raises(GeoDataError, match="non-empty"):
        write_geoip(tmp_path / "g.dat", {"": ["1.1.1.1"]})
    with pytest.raises(GeoDataError, match="not written: nope"):
        write_geoip(tmp_path / "g.dat", {"cn": []}, reverse=["nope"])
    assert not (tmp_path / "g.dat").exists()


# --------------------------------------------------------------------------- geosite


def test_geosite_round_trip_all_kinds_with_attrs(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    sites["cn"].append(SiteDomain("full", "ünïcode.例子", {"neg": -5, "big": 2**63 - 1, "min": -(2**63), "off": False}))
    sites["cn"].append(SiteDomain("plain", ""))  # empty value and type Plain: both omitted on the wire
    path = tmp_path / "geosite.dat"
    write_geosite(path, sites)
    got = read_geosite(path)
    assert got == sites
    assert list(got) == list(sites)
    attrs = got["cn"][4].attrs
    assert attrs == {"neg": -5, "big": 2**63 - 1, "min": -(2**63), "off": False}
    assert type(attrs["off"]) is bool and type(attrs["neg"]) is int
    assert {d.kind for d in got["cn"]} == {"plain", "regex", "domain", "full"}


def test_geosite_encoding_matches_spec_byte_for_byte() -> None:
    # Domain { type(1) = Full(3); value(2) = "a.cn"; attribute(3) = { key(1) = "ads"; bool_value(2) = true } }
    attr_ads = ld(1, b"ads") + key(2, 0) + b"\x01"
    # attribute { key = "n"; int_value(3) = -1 }: int64 two's complement, a 10-byte varint.
    attr_neg = ld(1, b"n") + key(3, 0) + b"\xff" * 9 + b"\x01"
    # attribute { key = "z"; bool_value = false }: a oneof member is written even when false.
    attr_false = ld(1, b"z") + key(2, 0) + b"\x00"
    full = key(1, 0) + b"\x03" + ld(2, b"a.cn") + ld(3, attr_ads) + ld(3, attr_neg) + ld(3, attr_false)
    plain = ld(2, b"kw")  # type Plain = 0 is the default: omitted
    regex = key(1, 0) + b"\x01" + ld(2, b"^x$")
    domain = key(1, 0) + b"\x02" + ld(2, b"qq.com")
    site = ld(1, b"CN") + ld(2, full) + ld(2, plain) + ld(2, regex) + ld(2, domain)
    expected = ld(1, site) + ld(1, ld(1, b"GEOLOCATION-!CN"))
    assert full[:2] == b"\x08\x03" and len(attr_neg) == 14

    got = encode_geosite(
        {
            "cn": [
                SiteDomain("full", "a.cn", {"ads": True, "n": -1, "z": False}),
                SiteDomain("plain", "kw"),
                SiteDomain("regex", "^x$"),
                SiteDomain("domain", "qq.com"),
            ],
            "geolocation-!cn": [],
        }
    )
    assert got == expected


def test_reader_follows_spec_not_just_our_writer(tmp_path: Path) -> None:
    """Fields out of order, unknown fields of every wire type, multi-byte lengths, over-long keys."""
    unknown = (
        key(12, 0) + b"\x96\x01"  # varint 150
        + key(10, 1) + bytes(8)  # fixed64
        + key(11, 5) + bytes(4)  # fixed32
        + ld(13, b"xyz")  # length-delimited
        + key(9, 3) + key(1, 0) + b"\x05" + key(9, 4)  # a group holding a varint
    )
    long_value = ("a" * 190 + ".example").encode()
    domain_reordered = (
        unknown
        + b"\x12" + bytes([len(long_value) & 0x7F | 0x80, len(long_value) >> 7]) + long_value  # 2-byte length
        + ld(3, unknown + key(2, 0) + b"\x01" + ld(1, b"ads"))  # attribute: value before key
        + key(1, 0) + b"\x03"  # type Full, last
    )
    type_twice = key(1, 0) + b"\x01" + ld(2, b"x") + key(1, 0) + b"\x02"  # last scalar wins: Domain
    overlong_value = b"\x92\x00" + b"\x02" + b"ok"  # non-minimal key for field 2 (value), LEN
    site = (
        ld(2, domain_reordered)
        + unknown
        + ld(2, type_twice)
        + ld(1, b"Mixed")  # country_code after the domains
        + b"\x92\x00" + bytes([len(overlong_value)]) + overlong_value  # Domain via an over-long key
    )
    assert len(site) > 127  # the entry's length is a 2-byte varint too
    data = unknown + ld(1, ld(1, b"first")) + unknown + ld(1, site)
    path = put(tmp_path, data)
    got = read_geosite(path)
    assert list(got) == ["first", "mixed"]
    assert got["mixed"] == [
        SiteDomain("full", long_value.decode(), {"ads": True}),
        SiteDomain("domain", "x"),
        SiteDomain("plain", "ok"),
    ]
    assert read_geosite(path, ["MIXED"])["mixed"] == got["mixed"]


def test_tag_selection_skips_other_entries(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    path = tmp_path / "geosite.dat"
    write_geosite(path, sites)
    assert read_geosite(path, ["google"]) == {"google": sites["google"]}
    assert read_geosite(path, iter(["cn", "google", "CN"])).keys() == {"cn", "google"}
    assert read_geosite(path, "cn") == {"cn": sites["cn"]}  # a lone str is one tag, not its letters
    assert read_geosite(path, []) == {}
    assert list_tags(path) == ["cn", "google", "geolocation-cn", "geolocation-!cn"]

    # An entry whose domains are well framed but invalid (Domain.Type 9) is never decoded unless asked for.
    bad = ld(1, ld(1, b"BAD") + ld(2, key(1, 0) + b"\x09" + ld(2, b"x")))
    path2 = put(tmp_path, path.read_bytes() + bad)
    assert read_geosite(path2, ["google"]) == {"google": sites["google"]}
    with pytest.raises(GeoDataError, match="entry 'bad': unknown Domain.Type 9"):
        read_geosite(path2, ["bad"])
    with pytest.raises(GeoDataError, match="unknown Domain.Type 9"):
        read_geosite(path2)


def test_first_entry_wins_for_duplicate_tags(tmp_path: Path) -> None:
    data = ld(1, ld(1, b"CN") + ld(2, ld(2, b"one"))) + ld(1, ld(1, b"cn") + ld(2, ld(2, b"two")))
    assert read_geosite(put(tmp_path, data))["cn"] == [SiteDomain("plain", "one")]


def test_case_insensitive_tags(tmp_path: Path) -> None:
    path = tmp_path / "geosite.dat"
    write_geosite(path, {"Google": [SiteDomain("domain", "google.com")], "cn": []})
    raw = path.read_bytes()
    assert b"GOOGLE" in raw and b"CN" in raw and b"Google" not in raw  # v2ray looks tags up upper-cased
    assert set(read_geosite(path, ["gOOgle", "CN"])) == {"google", "cn"}
    ip = tmp_path / "geoip.dat"
    write_geoip(ip, {"Cn": ["1.0.0.0/8"]})
    assert read_geoip(ip, ["CN"])["cn"].code == "cn"


# --------------------------------------------------------------------------- attributes


def test_filter_attr(sites: dict[str, list[SiteDomain]]) -> None:
    google = sites["google"]
    assert [d.value for d in filter_attr(google, "ads")] == ["ads.google.com"]
    assert [d.value for d in filter_attr(google, "CN")] == ["google.cn"]
    # "@!cn" is an attribute literally named "!cn" in domain-list-community, not a negation.
    assert [d.value for d in filter_attr(google, "!cn")] == ["ads.google.com", "googleapis.cn"]
    # geosite:TAG@a@b needs every attribute.
    assert [d.value for d in filter_attr(sites["cn"], "ads@cn")] == [r"^ad[0-9]+\.example\.cn$"]
    assert filter_attr(google, "nope") == []
    # v2ray checks the key only: a false or zero value still has the attribute.
    assert filter_attr([SiteDomain("domain", "x", {"ads": False})], "ads") == [
        SiteDomain("domain", "x", {"ads": False})]
    assert filter_attr([SiteDomain("domain", "x", {"Ads": True})], "ads")[0].has_attr("ADS")
    for bad in ("", "ads@", "@ads", "a@@b"):
        with pytest.raises(GeoDataError, match="empty attribute"):
            filter_attr(google, bad)


def test_site_domain_is_hashable_and_validated() -> None:
    a = SiteDomain("domain", "x.com", {"ads": True, "cn": True})
    b = SiteDomain("domain", "x.com", Attrs([("cn", True), ("ads", True)]))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert isinstance(a.attrs, Attrs) and a.attrs.get("ads") is True and "cn" in a.attrs
    assert SiteDomain("domain", "x", {"w": 1}) != SiteDomain("domain", "x", {"w": True})  # int_value vs bool_value
    assert SiteDomain("full", "y").attrs == {}
    with pytest.raises(ValueError, match="kind"):
        SiteDomain("keyword", "x")  # type: ignore[arg-type]  # the wrong kind is the point
    with pytest.raises(TypeError):
        SiteDomain("domain", "x", {"w": "yes"})  # type: ignore[dict-item]  # the wrong type is the point
    with pytest.raises(GeoDataError, match="does not fit int64"):
        encode_geosite({"t": [SiteDomain("domain", "x", {"w": 2**63})]})


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeoDataError, match=r"geosite file not found: .*nothere\.dat"):
        read_geosite(tmp_path / "nothere.dat")
    with pytest.raises(GeoDataError, match="geoip file not found"):
        read_geoip(tmp_path / "nothere.dat", ["cn"])
    with pytest.raises(GeoDataError, match="cannot read"):
        read_geoip(tmp_path)  # a directory


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(GeoDataError, match=r"empty\.dat: no entries"):
        read_geosite(put(tmp_path, b"", "empty.dat"))


def test_unknown_tag_suggests_close_matches(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    path = tmp_path / "geosite.dat"
    write_geosite(path, sites)
    with pytest.raises(GeoDataError) as exc:
        read_geosite(path, ["geolocation-cm"])
    message = str(exc.value)
    assert "geosite.dat" in message and "'geolocation-cm'" in message
    assert "did you mean 'geolocation-cn'" in message
    with pytest.raises(GeoDataError,
                       match=r"tags not found: 'gogle' \(did you mean 'google'\?\); 'zzzzzz'; the file has 4 tags"):
        read_geosite(path, ["cn", "gogle", "zzzzzz"])
    ip = tmp_path / "geoip.dat"
    write_geoip(ip, {"cn": ["1.0.0.0/8"], "us": ["3.0.0.0/8"]})
    with pytest.raises(GeoDataError, match="geoip tag not found: 'cnn' \\(did you mean 'cn'"):
        read_geoip(ip, ["cnn"])


def test_truncated_file(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    data = encode_geosite(sites)
    path = put(tmp_path, data[: len(data) - 3], "cut.dat")
    with pytest.raises(GeoDataError, match=r"cut\.dat: damaged or not a geosite file: truncated entry"):
        read_geosite(path, ["cn"])  # the whole list is checked, whichever tag is asked for
    # Cutting inside a domain's varint.
    with pytest.raises(GeoDataError, match="truncated"):
        read_geosite(put(tmp_path, ld(1, ld(1, b"CN") + ld(2, b"\x08")), "cut2.dat"))


def test_every_truncation_is_an_error_or_a_shorter_list(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    data = encode_geosite(sites)
    path = tmp_path / "t.dat"
    for n in range(len(data)):
        path.write_bytes(data[:n])
        try:
            got = read_geosite(path)
        except GeoDataError:
            continue
        assert got == {tag: sites[tag] for tag in list(sites)[: len(got)]}, n


@pytest.mark.parametrize("reader", [read_geosite, read_geoip])
def test_random_corruption_only_raises_geodata_error(tmp_path: Path, sites: dict[str, list[SiteDomain]],
                                                     reader: Callable[[Path], object]) -> None:
    rng = random.Random(20240611)
    base = encode_geosite(sites) if reader is read_geosite else encode_geoip(
        {"cn": ["1.0.0.0/8", "2400::/12", "10.0.0.0/8"], "us": ["3.0.0.0/8"]}, reverse=["us"]
    )
    path = tmp_path / "fuzz.dat"
    for _ in range(600):
        data = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            reader(path)
        except GeoDataError as exc:
            assert "fuzz.dat" in str(exc)
    path.write_bytes(bytes(rng.randrange(256) for _ in range(4096)))
    with pytest.raises(GeoDataError, match="fuzz.dat"):
        reader(path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01", "varint longer than 10 bytes"),
        (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f", "overflows 64 bits"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x02\x00", "invalid field number 0"),
        (b"\x08\x01", "list field 1 has wire type varint, expected length-delimited"),
        (b"\x4c", "unexpected end-group"),
        (b"\x4b\x08\x01", "group 9 is not closed"),
        (b"\x4b\x54", "group 9 closed as group 10"),
        (b"\x4b" * 5000, "nested too deeply"),
        (ld(1, ld(1, b"\xff\xfe")), "country_code is not valid UTF-8"),
    ],
)
def test_corrupt_structures(tmp_path: Path, data: bytes, message: str) -> None:
    with pytest.raises(GeoDataError, match=message):
        read_geosite(put(tmp_path, data, "bad.dat"))


def test_wrong_kind_of_file_is_reported(tmp_path: Path, sites: dict[str, list[SiteDomain]]) -> None:
    ip = tmp_path / "geoip.dat"
    write_geoip(ip, {"cn": ["1.0.0.0/8"]})
    with pytest.raises(GeoDataError, match="Domain field 1 has wire type length-delimited"):
        read_geosite(ip)
    site = tmp_path / "geosite.dat"
    write_geosite(site, sites)
    with pytest.raises(GeoDataError, match="CIDR field 1 has wire type varint"):
        read_geoip(site, ["cn"])
    with pytest.raises(GeoDataError, match="domain value is not valid UTF-8"):
        read_geosite(put(tmp_path, ld(1, ld(1, b"CN") + ld(2, ld(2, b"\xc3\x28")))))
