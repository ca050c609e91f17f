"""Read and write v2ray-format ``geoip.dat`` / ``geosite.dat`` files.

dae's ``geoip:TAG``, ``geosite:TAG[@attr]`` and ``ext:"file.dat:TAG"`` matchers read these
files. They are protobuf messages from v2ray's ``app/router/config.proto``::

    message Domain { enum Type { Plain = 0; Regex = 1; Domain = 2; Full = 3; }
      Type type = 1; string value = 2;
      message Attribute { string key = 1;
                          oneof typed_value { bool bool_value = 2; int64 int_value = 3; } }
      repeated Attribute attribute = 3; }
    message CIDR { bytes ip = 1; uint32 prefix = 2; }
    message GeoIP { string country_code = 1; repeated CIDR cidr = 2; bool reverse_match = 3; }
    message GeoIPList { repeated GeoIP entry = 1; }
    message GeoSite { string country_code = 1; repeated Domain domain = 2; }
    message GeoSiteList { repeated GeoSite entry = 1; }

Why a hand-written wire-format codec instead of the ``protobuf`` package:

* ``protobuf`` is not a dependency of this project, and the whole codec needed here is
  varints plus length-delimited fields (about the size of the descriptor boilerplate we
  would otherwise write, since there is no ``protoc`` to generate ``*_pb2.py``).
* The library can only parse a ``GeoSiteList`` as a whole. A real ``geosite.dat`` is
  several MB with ~1,500 tags, and a config names a handful: here the reader walks the
  list's length prefixes, peeks at each entry's ``country_code`` and decodes the domains
  of the requested entries only (the same trick as v2ray's own "memconservative" loader).
* Errors can name the file, the byte offset and the entry, instead of a generic
  ``DecodeError``.

The reader follows protobuf rules where they matter for real files: fields may come in
any order, unknown fields of every wire type (varint, fixed64, length-delimited, groups,
fixed32) are skipped, a later scalar overrides an earlier one, and a proto3 enum value
outside ``Domain.Type`` is rejected rather than guessed at. It is stricter in one way: a
*known* field carrying the wrong wire type is an error rather than being skipped as
unknown, because that is what handing a geoip file to the geosite reader (or a random
file to either) looks like, and silently yielding empty domains would mis-route traffic.

Tags are case-insensitive, as in dae and v2ray: results are keyed by the lower-cased tag.
The writer stores tags upper-cased because v2ray upper-cases the tag it looks up and
compares bytes exactly, so only an upper-case tag is found by real v2ray.
"""
from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal, TypeAlias

__all__ = [
    "Attrs",
    "DomainKind",
    "EMPTY_ATTRS",
    "GeoDataError",
    "GeoIP",
    "IPNetwork",
    "SiteDomain",
    "encode_geoip",
    "encode_geosite",
    "filter_attr",
    "list_tags",
    "read_geoip",
    "read_geosite",
    "write_geoip",
    "write_geosite",
]

DomainKind: TypeAlias = Literal["plain", "regex", "domain", "full"]
IPNetwork: TypeAlias = IPv4Network | IPv6Network
PathLike: TypeAlias = str | os.PathLike[str]

# Index = Domain.Type enum value; v2ray's names in the comments.
_KINDS: tuple[DomainKind, ...] = ("plain", "regex", "domain", "full")  # Plain, Regex, Domain, Full
_KIND_CODE: dict[str, int] = {kind: code for code, kind in enumerate(_KINDS)}

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group", 4: "end-group", 5: "fixed32"}
_MAX_FIELD = (1 << 29) - 1
_MAX_GROUP_DEPTH = 100  # Nested unknown groups in a damaged file must not hit Python's recursion limit.
_U64 = 1 << 64
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class GeoDataError(ValueError):
    """A geodata file is missing, unreadable or damaged, or a requested tag is not in it.

    A ``ValueError`` so config-validation code that already reports bad values reports
    these too; the message always names the file.
    """


class _Corrupt(Exception):
    """Internal: malformed wire data at ``offset``; turned into GeoDataError with the file name."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


# --------------------------------------------------------------------------- data types


class Attrs(Mapping[str, "bool | int"]):
    """An immutable, hashable ``{key: bool | int}`` of a domain's v2ray attributes.

    A ``Mapping`` so callers can write ``"ads" in d.attrs`` or ``d.attrs.get("ads")``, and
    hashable so ``SiteDomain`` can be deduplicated in sets. ``True`` and ``1`` are kept
    apart (they are different oneof members on the wire: ``bool_value`` vs ``int_value``).
    A repeated key keeps its last value.
    """

    __slots__ = ("_d", "_sig")

    def __init__(self, items: Mapping[str, bool | int] | Iterable[tuple[str, bool | int]] = ()) -> None:
        d: dict[str, bool | int] = dict(items.items() if isinstance(items, Mapping) else items)
        for key, value in d.items():
            if not isinstance(key, str):
                raise TypeError(f"attribute key must be str, not {type(key).__name__}: {key!r}")
            if not isinstance(value, int):  # bool is an int subclass
                raise TypeError(f"attribute {key!r} must be bool or int, not {type(value).__name__}")
        self._d = d
        self._sig: frozenset[tuple[str, bool | int, bool]] | None = None

    def _signature(self) -> frozenset[tuple[str, bool | int, bool]]:
        if self._sig is None:
            self._sig = frozenset((k, v, type(v) is bool) for k, v in self._d.items())
        return self._sig

    def __getitem__(self, key: str) -> bool | int:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __hash__(self) -> int:
        return hash(self._signature())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Attrs):
            return self._signature() == other._signature()
        if isinstance(other, Mapping):
            return self._d == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"Attrs({self._d!r})"


EMPTY_ATTRS = Attrs()


@dataclass(frozen=True, slots=True)
class SiteDomain:
    """One ``Domain`` of a geosite tag.

    ``kind`` uses dae's vocabulary for v2ray's ``Domain.Type``: ``plain`` is a keyword
    (substring), ``regex`` a regular expression, ``domain`` the domain and its subdomains,
    ``full`` an exact name. ``attrs`` accepts any mapping and is stored as :class:`Attrs`.
    """

    kind: DomainKind
    value: str
    attrs: Mapping[str, bool | int] = EMPTY_ATTRS

    def __post_init__(self) -> None:
        if self.kind not in _KIND_CODE:
            raise ValueError(f"domain kind must be one of {', '.join(_KINDS)}, not {self.kind!r}")
        if not isinstance(self.value, str):
            raise TypeError(f"domain value must be str, not {type(self.value).__name__}")
        if not isinstance(self.attrs, Attrs):
            object.__setattr__(self, "attrs", Attrs(self.attrs))

    def has_attr(self, key: str) -> bool:
        """Whether the domain carries attribute ``key`` (any value), compared case-insensitively like v2ray."""
        key = key.casefold()
        return any(k.casefold() == key for k in self.attrs)


@dataclass(frozen=True, slots=True)
class GeoIP:
    """One ``GeoIP`` entry: its (lower-cased) code, networks in file order, and ``reverse_match``.

    Networks are normalised with host bits masked (``10.1.2.3/8`` reads as ``10.0.0.0/8``),
    which is how v2ray's matcher treats them.
    """

    code: str
    networks: tuple[IPNetwork, ...]
    reverse_match: bool = False


# --------------------------------------------------------------------------- wire decoding


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a varint at ``pos`` that must end before ``end``; returns (value, next position)."""
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Corrupt("truncated varint", start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result >= _U64:
                raise _Corrupt("varint overflows 64 bits", start)
            return result, pos
        shift += 7
        if shift >= 70:
            raise _Corrupt("varint longer than 10 bytes", start)


def _key(buf: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Decode a field key; returns (field number, wire type, next position)."""
    start = pos
    b = buf[pos]
    if b < 0x80:
        key, pos = b, pos + 1
    else:
        key, pos = _varint(buf, pos, end)
    field, wire = key >> 3, key & 7
    if field == 0 or field > _MAX_FIELD:
        raise _Corrupt(f"invalid field number {field}", start)
    if wire in (6, 7):
        raise _Corrupt(f"invalid wire type {wire}", start)
    return field, wire, pos


def _len_span(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    """Read a length prefix at ``pos``; returns (payload start, payload end) checked against ``end``."""
    at = pos
    b = buf[pos] if pos < end else 0x80  # 0x80 sends an empty range to _varint, which reports truncation.
    if b < 0x80:
        n, pos = b, pos + 1
    else:
        n, pos = _varint(buf, pos, end)
    stop = pos + n
    if stop > end:
        raise _Corrupt(f"truncated {what}: needs {n} bytes, {end - pos} left", at)
    return pos, stop


def _skip(buf: bytes, field: int, wire: int, pos: int, end: int, depth: int = 0) -> int:
    """Skip the value of an unknown field whose key was just read; returns the next position."""
    at = pos
    if wire == _VARINT:
        return _varint(buf, pos, end)[1]
    if wire == _LEN:
        return _len_span(buf, pos, end, f"field {field}")[1]
    if wire == _I64 or wire == _I32:
        pos += 8 if wire == _I64 else 4
        if pos > end:
            raise _Corrupt(f"truncated {_WIRE_NAMES[wire]} field {field}", at)
        return pos
    if wire == _SGROUP:
        if depth >= _MAX_GROUP_DEPTH:
            raise _Corrupt("groups nested too deeply", at)
        while True:
            if pos >= end:
                raise _Corrupt(f"group {field} is not closed", at)
            inner, inner_wire, pos = _key(buf, pos, end)
            if inner_wire == _EGROUP:
                if inner != field:
                    raise _Corrupt(f"group {field} closed as group {inner}", pos)
                return pos
            pos = _skip(buf, inner, inner_wire, pos, end, depth + 1)
    raise _Corrupt(f"unexpected end-group for field {field}", at)  # _EGROUP outside a group


def _wrong_wire(message: str, field: int, wire: int, expected: int, at: int) -> _Corrupt:
    return _Corrupt(
        f"{message} field {field} has wire type {_WIRE_NAMES[wire]}, expected {_WIRE_NAMES[expected]}", at
    )


def _text(buf: bytes, start: int, stop: int, what: str) -> str:
    try:
        return buf[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise _Corrupt(f"{what} is not valid UTF-8", start) from None


def _entry_code(buf: bytes, start: int, stop: int) -> str:
    """The ``country_code`` of the GeoIP/GeoSite entry in ``buf[start:stop]``, lower-cased.

    Writers (v2ray's tools, Go's proto.Marshal, ours) put the code first, so it is read
    from the first field without touching the rest of the entry. Otherwise the entry's
    top-level fields are walked (length prefixes only) and the last code wins, per proto3.
    """
    code: str | None = None
    pos = start
    while pos < stop:
        first = pos == start
        at = pos
        field, wire, pos = _key(buf, pos, stop)
        if field == 1:
            if wire != _LEN:
                raise _wrong_wire("entry", field, wire, _LEN, at)
            a, pos = _len_span(buf, pos, stop, "country_code")
            code = _text(buf, a, pos, "country_code")
            if first:  # The usual layout: trust it without walking the entry, as v2ray does.
                break
        else:
            pos = _skip(buf, field, wire, pos, stop)
    return (code or "").lower()


def _index(buf: bytes) -> list[tuple[str, int, int]]:
    """Walk the top-level list; returns (lower-cased code, body start, body end) per entry."""
    entries: list[tuple[str, int, int]] = []
    pos, end = 0, len(buf)
    while pos < end:
        at = pos
        field, wire, pos = _key(buf, pos, end)
        if field != 1:
            pos = _skip(buf, field, wire, pos, end)
            continue
        if wire != _LEN:
            raise _wrong_wire("list", field, wire, _LEN, at)
        start, pos = _len_span(buf, pos, end, "entry")
        try:
            code = _entry_code(buf, start, pos)
        except _Corrupt as exc:
            raise _Corrupt(f"in entry starting at byte {at}: {exc}", exc.offset) from None
        entries.append((code, start, pos))
    return entries


def _decode_cidr(buf: bytes, pos: int, end: int) -> IPNetwork:
    at = pos
    ip = b""
    prefix = 0
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if field == 1:
            if wire != _LEN:
                raise _wrong_wire("CIDR", field, wire, _LEN, pos)
            a, pos = _len_span(buf, pos, end, "CIDR.ip")
            ip = buf[a:pos]
        elif field == 2:
            if wire != _VARINT:
                raise _wrong_wire("CIDR", field, wire, _VARINT, pos)
            prefix, pos = _varint(buf, pos, end)
        else:
            pos = _skip(buf, field, wire, pos, end)
    if len(ip) == 4:
        if prefix > 32:
            raise _Corrupt(f"IPv4 prefix length {prefix} > 32", at)
        return IPv4Network((ip, prefix), strict=False)
    if len(ip) == 16:
        if prefix > 128:
            raise _Corrupt(f"IPv6 prefix length {prefix} > 128", at)
        return IPv6Network((ip, prefix), strict=False)
    raise _Corrupt(f"CIDR address is {len(ip)} bytes, expected 4 or 16", at)


def _decode_geoip(code: str, buf: bytes, pos: int, end: int) -> GeoIP:
    networks: list[IPNetwork] = []
    reverse = 0
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if field == 2:
            if wire != _LEN:
                raise _wrong_wire("GeoIP", field, wire, _LEN, pos)
            a, pos = _len_span(buf, pos, end, "CIDR")
            networks.append(_decode_cidr(buf, a, pos))
        elif field == 3:
            if wire != _VARINT:
                raise _wrong_wire("GeoIP", field, wire, _VARINT, pos)
            reverse, pos = _varint(buf, pos, end)
        elif field == 1:
            if wire != _LEN:
                raise _wrong_wire("GeoIP", field, wire, _LEN, pos)
            pos = _len_span(buf, pos, end, "country_code")[1]
        else:
            pos = _skip(buf, field, wire, pos, end)
    return GeoIP(code, tuple(networks), bool(reverse))


def _decode_attr(buf: bytes, pos: int, end: int) -> tuple[str, bool | int]:
    key = ""
    value: bool | int = True  # A key with no typed_value still "has" the attribute for v2ray.
    while pos < end:
        field, wire, pos = _key(buf, pos, end)
        if field == 1:
            if wire != _LEN:
                raise _wrong_wire("Attribute", field, wire, _LEN, pos)
            a, pos = _len_span(buf, pos, end, "Attribute.key")
            key = _text(buf, a, pos, "attribute key")
        elif field == 2 or field == 3:  # oneof typed_value: the last one on the wire wins.
            if wire != _VARINT:
                raise _wrong_wire("Attribute", field, wire, _VARINT, pos)
            raw, pos = _varint(buf, pos, end)
            value = raw != 0 if field == 2 else (raw - _U64 if raw > _INT64_MAX else raw)
        else:
            pos = _skip(buf, field, wire, pos, end)
    return key, value


def _decode_domain(buf: bytes, pos: int, end: int) -> SiteDomain:
    """Decode one Domain. The hot loop of the reader: common 1-byte keys are special-cased."""
    typ = 0
    value = ""
    attrs: list[tuple[str, bool | int]] | None = None
    start = pos
    while pos < end:
        key = buf[pos]
        if key == 0x12:  # value: field 2, length-delimited
            a, pos = _len_span(buf, pos + 1, end, "Domain.value")
            try:
                value = buf[a:pos].decode("utf-8")
            except UnicodeDecodeError:
                raise _Corrupt("domain value is not valid UTF-8", a) from None
        elif key == 0x08:  # type: field 1, varint
            b = buf[pos + 1] if pos + 1 < end else 0x80
            if b < 0x80:
                typ, pos = b, pos + 2
            else:
                typ, pos = _varint(buf, pos + 1, end)
        elif key == 0x1A:  # attribute: field 3, length-delimited
            a, pos = _len_span(buf, pos + 1, end, "Domain.attribute")
            if attrs is None:
                attrs = []
            attrs.append(_decode_attr(buf, a, pos))
        else:
            at = pos
            field, wire, pos = _key(buf, pos, end)
            if field in (1, 2, 3):
                expected = _VARINT if field == 1 else _LEN
                if wire != expected:
                    raise _wrong_wire("Domain", field, wire, expected, at)
                if field == 1:
                    typ, pos = _varint(buf, pos, end)
                else:  # Over-long (non-minimal) key encodings: rare; reuse the slow path.
                    a, pos = _len_span(buf, pos, end, "Domain field")
                    if field == 2:
                        value = _text(buf, a, pos, "domain value")
                    else:
                        attrs = (attrs or []) + [_decode_attr(buf, a, pos)]
            else:
                pos = _skip(buf, field, wire, pos, end)
    if typ >= len(_KINDS):
        raise _Corrupt(f"unknown Domain.Type {typ} for {value!r}", start)
    return SiteDomain(_KINDS[typ], value, Attrs(attrs) if attrs else EMPTY_ATTRS)


def _decode_geosite(buf: bytes, pos: int, end: int) -> list[SiteDomain]:
    domains: list[SiteDomain] = []
    append = domains.append
    while pos < end:
        if buf[pos] == 0x12:  # domain: field 2, length-delimited
            a, pos = _len_span(buf, pos + 1, end, "Domain")
            append(_decode_domain(buf, a, pos))
            continue
        at = pos
        field, wire, pos = _key(buf, pos, end)
        if field == 2:
            if wire != _LEN:
                raise _wrong_wire("GeoSite", field, wire, _LEN, at)
            a, pos = _len_span(buf, pos, end, "Domain")
            append(_decode_domain(buf, a, pos))
        elif field == 1:
            if wire != _LEN:
                raise _wrong_wire("GeoSite", field, wire, _LEN, at)
            pos = _len_span(buf, pos, end, "country_code")[1]
        else:
            pos = _skip(buf, field, wire, pos, end)
    return domains


# --------------------------------------------------------------------------- public reading


def _read_file(path: PathLike, what: str) -> tuple[Path, bytes]:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise GeoDataError(f"{what} file not found: {p}") from None
    except OSError as exc:
        raise GeoDataError(f"cannot read {what} file {p}: {exc.strerror or exc}") from None
    return p, data


def _load_index(path: PathLike, what: str) -> tuple[Path, bytes, dict[str, tuple[int, int]]]:
    """Read the file and index its entries by lower-cased code (first entry wins, as in v2ray)."""
    p, data = _read_file(path, what)
    try:
        entries = _index(data)
    except _Corrupt as exc:
        raise GeoDataError(f"{p}: damaged or not a {what} file: {exc} (byte {exc.offset} of {len(data)})") from None
    if not entries:
        raise GeoDataError(f"{p}: no entries: empty or not a {what} file ({len(data)} bytes)")
    index: dict[str, tuple[int, int]] = {}
    for code, start, stop in entries:
        index.setdefault(code, (start, stop))
    return p, data, index


def _select(p: Path, what: str, index: Mapping[str, object], wanted: Iterable[str] | None) -> list[str]:
    """The lower-cased codes to decode; raises GeoDataError naming close matches for missing ones."""
    if wanted is None:
        return list(index)
    if isinstance(wanted, str):  # A lone "cn" would otherwise iterate as "c", "n".
        wanted = [wanted]
    codes = list(dict.fromkeys(code.lower() for code in wanted))
    missing = [code for code in codes if code not in index]
    if missing:
        known = sorted(index)
        parts = []
        for code in missing:
            close = difflib.get_close_matches(code, known, n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            parts.append(f"{code!r}{hint}")
        label = "tag" if len(missing) == 1 else "tags"
        raise GeoDataError(f"{p}: {what} {label} not found: {'; '.join(parts)}; the file has {len(known)} tags")
    return codes


def read_geoip(path: PathLike, codes: Iterable[str] | None = None) -> dict[str, GeoIP]:
    """Read GeoIP entries from a v2ray ``geoip.dat``, keyed by lower-cased code.

    With ``codes``, only those entries are decoded (case-insensitive); a missing one raises
    :class:`GeoDataError` with close matches. The whole list structure is still checked,
    so a truncated download is reported whichever code is asked for.
    """
    p, data, index = _load_index(path, "geoip")
    result: dict[str, GeoIP] = {}
    for code in _select(p, "geoip", index, codes):
        start, stop = index[code]
        try:
            result[code] = _decode_geoip(code, data, start, stop)
        except _Corrupt as exc:
            raise GeoDataError(f"{p}: damaged geoip entry {code!r}: {exc} (byte {exc.offset})") from None
    return result


def read_geosite(path: PathLike, tags: Iterable[str] | None = None) -> dict[str, list[SiteDomain]]:
    """Read GeoSite entries from a v2ray ``geosite.dat``, keyed by lower-cased tag.

    With ``tags``, only those entries' domains are decoded: the other entries are skipped
    by their length prefix. Pass the bare tag (``"cn"``), then :func:`filter_attr` for an
    ``@attr`` suffix. A missing tag raises :class:`GeoDataError` with close matches.
    """
    p, data, index = _load_index(path, "geosite")
    result: dict[str, list[SiteDomain]] = {}
    for tag in _select(p, "geosite", index, tags):
        start, stop = index[tag]
        try:
            result[tag] = _decode_geosite(data, start, stop)
        except _Corrupt as exc:
            raise GeoDataError(f"{p}: damaged geosite entry {tag!r}: {exc} (byte {exc.offset})") from None
    return result


def list_tags(path: PathLike) -> list[str]:
    """The lower-cased tags (codes) of a geoip or geosite file, in file order, without decoding entries."""
    return list(_load_index(path, "geodata")[2])


def filter_attr(domains: Iterable[SiteDomain], attr: str) -> list[SiteDomain]:
    """Keep the domains carrying attribute ``attr``, for ``geosite:TAG@attr``.

    Semantics are v2ray's (infra/conf/geodata/attr.go, and Xray's HasAttrMatcher): a domain
    matches if it has an attribute with that key, whatever its value; keys compare
    case-insensitively; ``"a@b"`` (from ``geosite:TAG@a@b``) requires every attribute.

    There is no negation. ``@!cn`` selects domains tagged with the attribute literally
    named ``!cn``, which domain-list-community uses for "not for mainland China" entries
    (``geosite:google@!cn``); it does not mean "without @cn". dae/v2ray read it the same way.
    """
    wanted = [part.strip().casefold() for part in attr.split("@")]
    if not attr or any(not part for part in wanted):
        raise GeoDataError(f"empty attribute in geosite attribute filter {attr!r}")
    return [d for d in domains if all(any(k.casefold() == w for k in d.attrs) for w in wanted)]


# --------------------------------------------------------------------------- writing


def _enc_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _enc_len(field: int, payload: bytes) -> bytes:
    return _enc_varint(field << 3 | _LEN) + _enc_varint(len(payload)) + payload


def _enc_uint(field: int, n: int) -> bytes:
    return _enc_varint(field << 3 | _VARINT) + _enc_varint(n)


def _tag_bytes(tag: object, seen: set[str]) -> bytes:
    # `object`: the mapping's keys come from callers' data, so the type is checked here, at run time.
    if not isinstance(tag, str) or not tag.strip():
        raise GeoDataError(f"geodata tag must be a non-empty string, not {tag!r}")
    upper = tag.upper()
    if upper in seen:
        raise GeoDataError(f"geodata tag {tag!r} given twice (tags are case-insensitive)")
    seen.add(upper)
    return upper.encode("utf-8")


def _as_network(item: object, tag: str) -> IPNetwork:
    if isinstance(item, (IPv4Network, IPv6Network)):
        return item
    if isinstance(item, (IPv4Address, IPv6Address)):
        return ipaddress.ip_network(item)
    if isinstance(item, str):
        try:
            return ipaddress.ip_network(item.strip(), strict=False)
        except ValueError as exc:
            raise GeoDataError(f"geoip tag {tag!r}: bad CIDR {item!r}: {exc}") from None
    raise GeoDataError(f"geoip tag {tag!r}: expected a CIDR string or network, not {type(item).__name__}")


def _atomic_write(path: PathLike, data: bytes) -> None:
    """Write via a temporary file and rename, so a reader never sees half a file."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise GeoDataError(f"cannot write {p}: {exc.strerror or exc}") from None


def encode_geoip(entries: Mapping[str, Iterable[object]], reverse: bool | Iterable[str] = False) -> bytes:
    """Encode a ``GeoIPList`` the way Go's proto.Marshal does (fields in order, defaults omitted)."""
    reversed_tags = None if isinstance(reverse, bool) else {t.lower() for t in reverse}
    seen: set[str] = set()
    out = []
    for tag, items in entries.items():
        body = [_enc_len(1, _tag_bytes(tag, seen))]
        for item in items:
            net = _as_network(item, tag)
            cidr = _enc_len(1, net.network_address.packed)
            if net.prefixlen:
                cidr += _enc_uint(2, net.prefixlen)
            body.append(_enc_len(2, cidr))
        is_reverse = reverse if reversed_tags is None else tag.lower() in reversed_tags
        if is_reverse:
            body.append(_enc_uint(3, 1))
        out.append(_enc_len(1, b"".join(body)))
    if reversed_tags is not None and (unknown := reversed_tags - {t.lower() for t in entries}):
        raise GeoDataError(f"reverse names tags that are not written: {', '.join(sorted(unknown))}")
    return b"".join(out)


def _enc_domain(domain: SiteDomain) -> bytes:
    parts = []
    if domain.kind != "plain":
        parts.append(_enc_uint(1, _KIND_CODE[domain.kind]))
    if domain.value:
        parts.append(_enc_len(2, domain.value.encode("utf-8")))
    for key, value in domain.attrs.items():
        attr = _enc_len(1, key.encode("utf-8")) if key else b""
        if isinstance(value, bool):  # A oneof member is written even when it is false/0.
            attr += _enc_uint(2, int(value))
        elif _INT64_MIN <= value <= _INT64_MAX:
            attr += _enc_uint(3, value % _U64)  # int64: two's complement, 10 bytes when negative.
        else:
            raise GeoDataError(f"attribute {key!r} of {domain.value!r}: {value} does not fit int64")
        parts.append(_enc_len(3, attr))
    return b"".join(parts)


def encode_geosite(entries: Mapping[str, Iterable[SiteDomain]]) -> bytes:
    """Encode a ``GeoSiteList`` the way Go's proto.Marshal does (fields in order, defaults omitted)."""
    seen: set[str] = set()
    out = []
    for tag, domains in entries.items():
        body = [_enc_len(1, _tag_bytes(tag, seen))]
        for domain in domains:
            if not isinstance(domain, SiteDomain):
                raise GeoDataError(f"geosite tag {tag!r}: expected SiteDomain, not {type(domain).__name__}")
            body.append(_enc_len(2, _enc_domain(domain)))
        out.append(_enc_len(1, b"".join(body)))
    return b"".join(out)


def write_geoip(
    path: PathLike, entries: Mapping[str, Iterable[str | IPNetwork | IPv4Address | IPv6Address]],
    reverse: bool | Iterable[str] = False,
) -> None:
    """Write a ``geoip.dat`` that v2ray, dae and :func:`read_geoip` read.

    ``entries`` maps tag to CIDRs (strings, networks or single addresses); host bits are
    masked. ``reverse`` sets ``reverse_match`` on every entry (``True``) or on the named tags.
    """
    _atomic_write(path, encode_geoip(entries, reverse))


def write_geosite(path: PathLike, entries: Mapping[str, Iterable[SiteDomain]]) -> None:
    """Write a ``geosite.dat`` that v2ray, dae and :func:`read_geosite` read."""
    _atomic_write(path, encode_geosite(entries))


# ---- where the files are looked for --------------------------------------------------------------
# dae (common/assets: $DAE_LOCATION_ASSET, the config's folder, $XDG_DATA_HOME/dae, each of
# $XDG_DATA_DIRS/dae) and v2ray ($V2RAY_LOCATION_ASSET, /usr/local/share/v2ray, /usr/share/v2ray),
# after global.asset_dir when it is set. The first folder holding the file wins.


def asset_search_dirs(config_dir: PathLike, asset_dir: PathLike | None = None,
                      env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The folders searched, in order, without duplicates (relative ones against `config_dir`)."""
    env = os.environ if env is None else env
    base = Path(config_dir)
    dirs: list[Path] = []
    if asset_dir:
        dirs.append(Path(asset_dir))
    if env.get("DAE_LOCATION_ASSET"):
        dirs.append(Path(env["DAE_LOCATION_ASSET"]))
    dirs.append(base)
    home = env.get("XDG_DATA_HOME") or (str(Path(env["HOME"]) / ".local" / "share") if env.get("HOME") else "")
    if home:
        dirs.append(Path(home) / "dae")
    data_dirs = env.get("XDG_DATA_DIRS") or "/usr/local/share:/usr/share"
    dirs += [Path(d) / "dae" for d in data_dirs.split(":") if d]
    if env.get("V2RAY_LOCATION_ASSET"):
        dirs.append(Path(env["V2RAY_LOCATION_ASSET"]))
    dirs += [Path("/usr/local/share/v2ray"), Path("/usr/share/v2ray")]
    out: list[Path] = []
    for d in dirs:
        d = d if d.is_absolute() else base / d
        if d not in out:
            out.append(d)
    return tuple(out)


def find_asset(name: PathLike, dirs: Iterable[Path], what: str) -> Path:
    """The first `dir/name` that exists; GeoDataError listing every folder looked in otherwise.
    An absolute `name` is taken as it is."""
    p = Path(name)
    if p.is_absolute():
        return p
    looked = list(dirs)
    for d in looked:
        if (d / p).is_file():
            return d / p
    raise GeoDataError(f"{what} file '{p}' not found; looked in: {', '.join(str(d) for d in looked)}")
