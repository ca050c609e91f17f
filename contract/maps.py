"""The key and value layouts of the maps the runtime reads and writes, declared once, as data.

templates/bpf/common.h declares these structs for the kernel; the runtime packs and unpacks them
with `struct.Struct`s built from the declarations here (never a format string written inline),
and tests/test_map_layouts.py checks every declaration against the BTF of a built program.o:
struct size and each member's offset and size. A field added to common.h without its twin here
fails that test rather than shifting every key the runtime builds.

A member's `fmt` is one `struct` item ("I", "H", "16s", ...) in the layout's byte order, or a
nested Layout (`flow_value.decision`). Members named `_pad...` and gaps between members (C
padding) become pad bytes: packed as zeros, left out of `fields` and of unpack's result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from struct import Struct, calcsize
from typing import Any


@dataclass(frozen=True)
class Member:
    name: str
    fmt: str | Layout
    offset: int

    @property
    def size(self) -> int:
        return self.fmt.size if isinstance(self.fmt, Layout) else calcsize("=" + self.fmt)


@dataclass(frozen=True)
class Layout:
    """One C struct: its name in common.h, the byte order of its multi-byte members ("<" host
    order on x86-64 and BPF, "!" for __be16/__be32 members), members in order, total size."""

    c_name: str
    byte_order: str
    members: tuple[Member, ...]
    size: int
    doc: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        end = 0
        for m in self.members:
            if m.offset < end:
                raise ValueError(f"struct {self.c_name}: member {m.name} overlaps the one before it")
            end = m.offset + m.size
        if end > self.size:
            raise ValueError(f"struct {self.c_name}: members end at {end}, past its size {self.size}")

    def _fmt(self, start: int = 0) -> str:
        """struct items from byte `start` (a member's offset) to the end; `_pad` members and
        gaps are pad bytes."""
        out, pos = [], start
        for m in self.members:
            if m.offset < start:
                continue
            if m.offset > pos:
                out.append(f"{m.offset - pos}x")
            if isinstance(m.fmt, Layout):
                out.append(m.fmt._fmt())
            elif m.name.startswith("_"):
                out.append(f"{m.size}x")
            else:
                out.append(m.fmt)
            pos = m.offset + m.size
        if self.size > pos:
            out.append(f"{self.size - pos}x")
        return "".join(out)

    @cached_property
    def struct(self) -> Struct:
        """The whole struct, nested members flattened, padding as pad bytes."""
        s = Struct(self.byte_order + self._fmt())
        if s.size != self.size:
            raise ValueError(f"struct {self.c_name}: the members pack to {s.size} bytes, not {self.size}")
        return s

    def tail(self, first: str) -> Struct:
        """The members from `first` to the end (the relay packs a flow key's addresses itself,
        without the ipaddress module, and the rest of it with this)."""
        return Struct(self.byte_order + self._fmt(self.member(first).offset))

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """The flattened member names, in struct order (`decision.mark`, ...), padding left out."""
        names: list[str] = []
        for m in self.members:
            if isinstance(m.fmt, Layout):
                names.extend(f"{m.name}.{sub}" for sub in m.fmt.fields)
            elif not m.name.startswith("_"):
                names.append(m.name)
        return tuple(names)

    def pack(self, *values: Any) -> bytes:
        return self.struct.pack(*values)

    def unpack(self, raw: bytes, offset: int = 0) -> dict[str, Any]:
        # One name per unpacked value, by construction (fields and _fmt skip the same padding).
        return dict(zip(self.fields, self.struct.unpack_from(raw, offset), strict=True))

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(f"struct {self.c_name} has no member {name!r}")


FLOW_KEY = Layout("flow_key", "!", (
    Member("saddr", "16s", 0),  # IPv4 in the first 4 bytes, network order
    Member("daddr", "16s", 16),
    Member("sport", "H", 32),  # __be16
    Member("dport", "H", 34),
    Member("l4proto", "B", 36),
    Member("ipversion", "B", 37),
    Member("_pad", "H", 38),
), 40, "the `flows` key: a flow's 5-tuple as the tc program saw its first packet")

DECISION = Layout("decision", "<", (
    Member("mark", "I", 0),
    Member("rule", "H", 4),
    Member("outbound", "B", 6),
    Member("flags", "B", 7),  # DECISION_MUST
), 8, "what classify() decided for a flow")

DECISION_MUST = 0x01

FLOW_VALUE = Layout("flow_value", "<", (
    Member("decision", DECISION, 0),
    Member("last_seen_ns", "Q", 8),
), 16, "the `flows` value")

IP_KEY = Layout("ip_key", "!", (
    Member("addr", "16s", 0),
), 16, "the domain_routing6 key (domain_routing4's is a bare __be32)")

PNAME_VALUE = Layout("pname_value", "<", (
    Member("comm_lo", "Q", 0),  # comm[16], the process name, as two u64
    Member("comm_hi", "Q", 8),
    Member("pid", "I", 16),
    Member("_pad", "I", 20),
    Member("exe_lo", "Q", 24),  # the basename of the executable (mm->exe_file), 16 bytes likewise
    Member("exe_hi", "Q", 32),
), 40, "the sock_pname value: the process that opened a socket")

OUTBOUND_STATS = Layout("outbound_stats", "<", (
    Member("packets", "Q", 0),
    Member("bytes", "Q", 8),
), 16, "outbound_stats' per-CPU value, one per outbound id")

RULE_HITS = Layout("rule_hits", "<", (
    Member("flows", "Q", 0),
), 8, "rule_hits' per-CPU value, one per rule index (the fallback at index len(rules)): flows decided")

#: Every layout above, by C struct name (the BTF test walks this).
LAYOUTS: dict[str, Layout] = {lay.c_name: lay for lay in (FLOW_KEY, DECISION, FLOW_VALUE, IP_KEY, PNAME_VALUE,
                                                          OUTBOUND_STATS, RULE_HITS)}

#: Scalar map keys and values (u32 array indices, u64 words), little-endian like the kernel's.
U32 = Struct("<I")
U64 = Struct("<Q")

#: The maps holding runtime state (not compiler-written tables): flow decisions, DNS bindings,
#: process names, counters. A reload of the program must carry them over (pin and re-use) rather
#: than start them empty; the manifest lists them (`state_maps`) for the runtime that reloads.
STATE_MAPS: tuple[str, ...] = ("flows", "outbound_stats", "domain_routing4", "domain_routing6", "domain_filter",
                               "sock_pname")
