"""Map dae's sections onto this project's config structure (what the YAML loader produces).

The result is the same plain `dict` the YAML loader makes from config.yaml, so the schema, the
semantic checks and every diagnostic after this run unchanged. The mapping follows dae's own
decoder (config/config.go, config/parser.go, config/patch.go):

- `global`, a group, `dns`: `key: value`; a list is `a, b` (dae joins it with commas, and the
  settings stage splits it again); a key given twice keeps the last value (a list option adds up).
- `node`, `subscription`, `dns { upstream { } }`: `name: 'link'`, or a bare `'link'` with no name.
- `group { NAME { filter: ... policy: ... } }`: `filter` may repeat (the filters are ORed).
- `routing { }`, `dns { routing { request { } response { } } }`: rule lines and `fallback:` (also
  called `default:`); a missing fallback is dae's default (`direct`; `asis`; `accept`).

An option dae knows and this project's schema does not is a warning at its line (and the
translation to YAML keeps it as a comment); an option neither knows is passed on, so the schema
reports it with a "did you mean". Values are converted to the types the schema asks for, as
dae's FuzzyDecode does (`12345`, `'12345'`, `true`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from ..diagnostics import Diagnostic, Diagnostics, SourcePos, did_you_mean
from ..load import JsonPath
from ..schema import validator
from .positions import DaePosMap
from .syntax import Declaration, Item, Literal, Rule, Section, Segment, Text

# dae's options per section (config/config.go), so that one this project lacks is told apart
# from a typo.
DAE_GLOBAL_OPTIONS = (
    "tproxy_port", "tproxy_port_protect", "so_mark_from_dae", "log_level", "tcp_check_url",
    "tcp_check_http_method", "udp_check_dns", "check_interval", "check_tolerance", "lan_interface",
    "wan_interface", "allow_insecure", "dial_mode", "disable_waiting_network", "disable_thp",
    "enable_local_tcp_fast_redirect", "auto_config_kernel_parameter", "auto_config_firewall_rule",
    "sniffing_timeout", "tls_implementation", "utls_imitate", "tls_fragment", "tls_fragment_length",
    "tls_fragment_interval", "pprof_port", "mptcp", "bootstrap_resolver", "fallback_resolver",
    "bandwidth_max_tx", "bandwidth_max_rx", "udphop_interval", "bpf_conn_state_map_size",
)
DAE_GROUP_OPTIONS = ("filter", "policy", "tcp_check_url", "tcp_check_http_method", "udp_check_dns",
                     "check_interval", "check_tolerance")
DAE_DNS_OPTIONS = ("ipversion_prefer", "fixed_domain_ttl", "upstream", "routing", "bind", "optimistic_cache",
                   "optimistic_cache_ttl", "max_cache_size")
# Options dae documents as deprecated and no longer reads.
DAE_DEPRECATED = {"enable_local_tcp_fast_redirect": "dae no longer reads it (since dae PR 912)",
                  "auto_config_firewall_rule": "dae no longer reads it (since dae PR 458)"}
SECTIONS = ("global", "subscription", "node", "group", "dns", "routing")
# `subscription { 'https-file://...' }`: dae fetches over https and keeps a copy to fall back on.
_PERSIST_SCHEMES = {"https-file://": "https://", "http-file://": "http://"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


@dataclass
class Mapped:
    data: dict[str, Any]
    pos: DaePosMap
    warnings: list[Diagnostic] = field(default_factory=list)
    # (path of the mapping it belongs to, text): dae options kept as comments in --to-yaml
    notes: list[tuple[JsonPath, str]] = field(default_factory=list)


def _root() -> dict[str, Any]:
    schema = validator().schema
    assert isinstance(schema, dict), "schemas/config.schema.json is an object"
    return schema


def _schema_node(path: JsonPath) -> dict[str, Any] | None:
    """The schema object for the config value at `path` (string keys only), or None."""
    root = _root()
    node: Any = root
    for key in path:
        node = _deref(root, node)
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        if key in props:
            node = props[key]
        elif isinstance(node, dict) and isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return None
    node = _deref(root, node)
    return node if isinstance(node, dict) else None


def _deref(root: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), ref
        node = root["$defs"][ref.removeprefix("#/$defs/")]
    return node


def _types(schema: dict[str, Any] | None) -> set[str]:
    if schema is None:
        return set()
    out: set[str] = set()
    t = schema.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(x for x in t if isinstance(x, str))
    for v in schema.get("enum", ()):
        out.add("boolean" if isinstance(v, bool) else "integer" if isinstance(v, int) else "string")
    for sub in [*schema.get("oneOf", []), *schema.get("anyOf", [])]:
        if isinstance(sub, dict):
            out.update(_types(_deref(_root(), sub)))
    return out


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def coerce(text: str, schema: dict[str, Any] | None) -> Any:
    """dae's FuzzyDecode for what the schema expects: a bool or a number where the schema has no
    string form, else the text itself (a wrong value then gets the schema's message)."""
    types = _types(schema)
    if "string" in types or not types:
        return text
    if "boolean" in types:
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    if "integer" in types or "number" in types:
        try:
            return int(text, 0)
        except ValueError:
            pass
        if "number" in types:
            try:
                return float(text)
            except ValueError:
                pass
    return text


def _concat(parts: list[Text | tuple[str, SourcePos]], start: SourcePos | None = None) -> Text:
    value: list[str] = []
    segs: list[Segment] = []
    n = 0
    for p in parts:
        if isinstance(p, Text):
            segs.extend(Segment(n + s.offset, s.pos, s.raw) for s in p.segments)
            value.append(p.value)
            n += len(p.value)
        else:
            segs.append(Segment(n, p[1], p[0]))
            value.append(p[0])
            n += len(p[0])
    return Text("".join(value), tuple(segs), start=start)


def _item_pos(item: Item) -> SourcePos:
    if isinstance(item, Declaration):
        return item.key_pos
    if isinstance(item, Section):
        return item.pos
    return item.text.pos


def _describe(item: Item) -> str:
    if isinstance(item, Declaration):
        return f"option '{item.key}'"
    if isinstance(item, Section):
        return f"section '{item.name} {{ }}'"
    if isinstance(item, Rule):
        return "a rule"
    return f"value '{item.text.value[:40]}'"


class Mapper:
    def __init__(self, entry: str, entry_text: str, diags: Diagnostics):
        self.diags = diags
        self.out = Mapped({}, DaePosMap(entry, entry_text))
        self.out.pos.put((), SourcePos(entry, 1, 1))

    # -- helpers --------------------------------------------------------------------------------

    def warn(self, pos: SourcePos, message: str, hint: str | None = None) -> None:
        self.diags.warning(pos, message, hint)

    def _set(self, path: JsonPath, value: Any, where: Text | SourcePos, key: SourcePos | None = None) -> None:
        parent: Any = self.out.data
        for k in path[:-1]:
            parent = parent[k]
        parent[path[-1]] = value
        self.out.pos.put(path, where, key)

    def _mapping(self, path: JsonPath, at: SourcePos) -> dict[str, Any]:
        parent: Any = self.out.data
        for k in path[:-1]:
            parent = parent[k]
        if path[-1] not in parent:
            parent[path[-1]] = {}
            self.out.pos.put(path, at, at)
        m: dict[str, Any] = parent[path[-1]]
        return m

    def _unexpected(self, section: str, item: Item, expected: str) -> None:
        self.diags.error(_item_pos(item), f"{section} {{ }} does not take {_describe(item)}", f"it takes {expected}")

    def _options(self, section: Section, path: JsonPath, dae_known: tuple[str, ...],
                 special: dict[str, Callable[[Item], None]] | None = None) -> None:
        """`key: value` items of `section` into the mapping at `path`, typed by the schema."""
        special = special or {}
        here = self._mapping(path, section.pos)
        for item in section.items:
            name = item.key if isinstance(item, Declaration) else item.name if isinstance(item, Section) else None
            if name is not None and name in special:
                special[name](item)
                continue
            if not isinstance(item, Declaration):
                self._unexpected(".".join(map(str, path)) or section.name, item, "'key: value' options")
                continue
            key = item.key
            where = ".".join(str(p) for p in path) + "." + key
            schema = _schema_node(path + (key,))
            if schema is None and key in dae_known:
                reason = DAE_DEPRECATED.get(key, "this project does not support it yet")
                self.warn(item.key_pos, f"{where} is a dae option that is ignored here: {reason}",
                          "remove it to silence this warning")
                self.out.notes.append((path, f"{key}: {item.value.value}  # ignored: {reason}"))
                continue
            is_list = "array" in _types(schema) and not item.is_function
            if key in here and key != "filter" and not (is_list and isinstance(here[key], list)):
                self.warn(item.key_pos, f"{where} is set twice; the last value is used (as dae does)")
            if is_list:
                # dae splits a list option at every comma (quoted or not); given twice, it adds up
                items = here[key] if isinstance(here.get(key), list) else []
                if not items:
                    self._set(path + (key,), items, item.value, item.key_pos)
                start = 0
                for part in item.value.value.split(","):
                    stripped = part.strip()
                    if stripped:
                        at = start + len(part) - len(part.lstrip())
                        self.out.pos.put(path + (key, len(items)), _slice(item.value, at, at + len(stripped)))
                        items.append(stripped)
                    start += len(part) + 1
                continue
            value: Any = item.value.value
            if not item.is_function and len(item.literals) == 1:
                value = coerce(item.value.value, schema)
            self._set(path + (key,), value, item.value, item.key_pos)

    # -- sections -------------------------------------------------------------------------------

    def map(self, sections: list[Section]) -> Mapped:
        by_name = {s.name: s for s in sections}
        for s in sections:
            if s.name not in SECTIONS:
                self.diags.error(s.pos, f"unknown section '{s.name}'", did_you_mean(s.name, SECTIONS + ("include",)))
        if "global" in by_name:
            self._options(by_name["global"], ("global",), DAE_GLOBAL_OPTIONS)
        if "node" in by_name:
            self._links(by_name["node"], "nodes", "node")
        if "subscription" in by_name:
            self._links(by_name["subscription"], "subscriptions", "subscription")
        if "group" in by_name:
            self._groups(by_name["group"])
        if "dns" in by_name:
            self._dns(by_name["dns"])
        if "routing" in by_name:
            self._routing(by_name["routing"], ("routing",), "direct", "routing")
        return self.out

    def _links(self, section: Section, key: str, what: str) -> None:
        """`name: 'link'` or a bare `'link'` (dae: a KeyableString list)."""
        here = self._mapping((key,), section.pos)
        unnamed = 0
        for item in section.items:
            if isinstance(item, Declaration) and item.value.value.startswith("//") and not item.value.quoted:
                # `https://host/x` unquoted: dae's lexer reads it as `https: //host/x`, and dae
                # joins them back ("key:value") into the link it was.
                text: Text | None = _concat([(item.key, item.key_pos), (":", item.key_pos), item.value])
                name = None
            elif isinstance(item, Declaration) and not item.is_function:
                text, name = item.value, item.key
            elif isinstance(item, Literal):
                text, name = item.text, None
            else:
                self._unexpected(what, item, "links: 'name: link' or a bare 'link'")
                continue
            assert text is not None
            link = text.value
            if what == "subscription":
                for old, new in _PERSIST_SCHEMES.items():
                    if link.startswith(old) and not _schema_accepts((key, "x"), link):
                        self.warn(text.pos, f"subscription {link[:len(old)]}: the copy dae keeps to fall back on "
                                            f"is not implemented here; it is fetched as {new}")
                        link = new + link[len(old):]
                        text = _concat([(new, text.at(0)), _tail(text, len(old))], start=text.pos)
            if name is None:
                unnamed += 1
                name = self._name_for(link, what, unnamed, here, text.pos)
            elif name in here:
                self.diags.error(_item_pos(item), f"{what} '{name}' is defined twice")
                continue
            self._set((key, name), link, text, _item_pos(item))

    def _name_for(self, link: str, what: str, n: int, taken: dict[str, Any], at: SourcePos) -> str:
        frag = unquote(link.partition("#")[2]) if what == "node" else ""
        if frag and _NAME.match(frag) and frag not in taken:
            return frag
        base = f"{what}_{n}"
        while base in taken:
            base += "_"
        if what == "node":
            self.warn(at, f"this node has no name; it is called '{base}' here",
                      f"name it: {base}: 'link' (dae names it from the link, and a group's name() filter "
                      "may expect that name)")
        else:
            self.warn(at, f"this subscription has no tag; it is called '{base}' here",
                      f"tag it: {base}: 'link' (its nodes get this tag for subtag() filters)")
        return base

    def _groups(self, section: Section) -> None:
        self._mapping(("groups",), section.pos)
        for item in section.items:
            if not isinstance(item, Section):
                self._unexpected("group", item, "one 'NAME { filter: ... policy: ... }' per group")
                continue
            path: JsonPath = ("groups", item.name)
            if item.name in self.out.data["groups"]:
                self.diags.error(item.pos, f"group '{item.name}' is defined twice")
                continue
            filters: list[str] = []

            def add_filter(decl: Item, path: JsonPath = path, filters: list[str] = filters) -> None:
                assert isinstance(decl, Declaration)
                filters.append(decl.value.value)
                if len(filters) == 1:
                    self._set(path + ("filter",), filters, decl.key_pos, decl.key_pos)
                self.out.pos.put(path + ("filter", len(filters) - 1), decl.value)

            self._options(item, path, DAE_GROUP_OPTIONS, {"filter": _decl_only(add_filter, self, "filter")})

    def _dns(self, section: Section) -> None:
        def upstream(item: Item) -> None:
            if not isinstance(item, Section):
                self._unexpected("dns", item, "upstream { name: 'scheme://host:port' }")
                return
            self._upstreams(item)

        def ttl(item: Item) -> None:
            if not isinstance(item, Section):
                self._unexpected("dns", item, "fixed_domain_ttl { domain: seconds }")
                return
            here = self._mapping(("dns", "fixed_domain_ttl"), item.pos)
            schema = _schema_node(("dns", "fixed_domain_ttl", "x"))
            for d in item.items:
                if not isinstance(d, Declaration) or d.is_function:
                    self._unexpected("fixed_domain_ttl", d, "'domain: seconds' lines")
                    continue
                if d.key in here:
                    self.warn(d.key_pos, f"fixed_domain_ttl for '{d.key}' is set twice; the last value is used")
                self._set(("dns", "fixed_domain_ttl", d.key), coerce(d.value.value, schema), d.value, d.key_pos)

        def routing(item: Item) -> None:
            if not isinstance(item, Section):
                self._unexpected("dns", item, "routing { request { } response { } }")
                return
            self._mapping(("dns", "routing"), item.pos)
            for sub in item.items:
                if isinstance(sub, Section) and sub.name in ("request", "response"):
                    if sub.name in self.out.data["dns"]["routing"]:
                        # dae merges same-named sections only at the top level
                        self.diags.error(sub.pos, f"dns routing {sub.name} {{ }} is given twice")
                        continue
                    self._routing(sub, ("dns", "routing", sub.name),
                                  "asis" if sub.name == "request" else "accept", f"dns {sub.name}")
                else:
                    self._unexpected("dns routing", sub, "request { } and response { }")

        self._options(section, ("dns",), DAE_DNS_OPTIONS,
                      {"upstream": upstream, "fixed_domain_ttl": ttl, "routing": routing})

    def _upstreams(self, section: Section) -> None:
        here = self._mapping(("dns", "upstream"), section.pos)
        for item in section.items:
            if isinstance(item, Declaration) and not item.is_function:
                if item.value.value.startswith("//") and not item.value.quoted:
                    self.warn(item.key_pos, "a DNS upstream with no name is ignored (as dae does)",
                              "name it: NAME: 'scheme://host:port'")
                    continue
                if item.key in here:
                    self.diags.error(item.key_pos, f"dns upstream '{item.key}' is defined twice")
                    continue
                self._set(("dns", "upstream", item.key), item.value.value, item.value, item.key_pos)
            elif isinstance(item, Literal):
                self.warn(item.text.pos, "a DNS upstream with no name is ignored (as dae does)",
                          "name it: NAME: 'scheme://host:port'")
            else:
                self._unexpected("upstream", item, "'name: scheme://host:port' lines")

    def _routing(self, section: Section, path: JsonPath, default_fallback: str, what: str) -> None:
        here = self._mapping(path, section.pos)
        rules: list[str] = []
        here["rules"] = rules
        self.out.pos.put(path + ("rules",), section.pos)
        fallback: Declaration | None = None
        for item in section.items:
            if isinstance(item, Rule):
                self.out.pos.put(path + ("rules", len(rules)), item.text)
                rules.append(item.text.value)
            elif isinstance(item, Declaration) and item.key in ("fallback", "default"):
                if fallback is not None:
                    self.warn(item.key_pos, f"{what} has a second fallback; the last one is used (as dae does)")
                fallback = item
            else:
                self._unexpected(what, item, "rules 'func(...) -> outbound' and 'fallback: outbound'")
        if fallback is not None:
            self._set(path + ("fallback",), fallback.value.value, fallback.value, fallback.key_pos)
        else:
            # dae's default; said once in the YAML translation (a comment), not as a warning.
            self._set(path + ("fallback",), default_fallback, section.pos, section.pos)
            self.out.notes.append((path, f"fallback: {default_fallback} is dae's default "
                                         f"(this {what} section sets none)"))


def _tail(text: Text, start: int) -> Text:
    """`text` without its first `start` characters."""
    segs = []
    for s in text.segments:
        end = s.offset + len(s.raw)
        if end <= start:
            continue
        cut = max(start - s.offset, 0)
        segs.append(Segment(s.offset + cut - start, text.at(s.offset + cut), s.raw[cut:]))
    return Text(text.value[start:], tuple(segs), text.quoted)


def _slice(text: Text, start: int, end: int) -> Text:
    """Characters `start..end` of `text`, with their positions."""
    tail = _tail(text, start)
    n = end - start
    segs = tuple(Segment(sg.offset, sg.pos, sg.raw[:max(n - sg.offset, 0)]) for sg in tail.segments if sg.offset < n)
    return Text(tail.value[:n], segs or tail.segments[:1], text.quoted,
                start=text.pos if start == 0 else None)


def _schema_accepts(path: JsonPath, value: str) -> bool:
    schema = _schema_node(path)
    if schema is None:
        return True
    # a value may have a string form among others (subscriptions: a URL, or {url, interval})
    strings = [s for s in [schema, *schema.get("oneOf", ())] if "pattern" in s]
    if not strings:
        return True
    return any(re.search(s["pattern"], value) is not None for s in strings)


def _decl_only(fn: Callable[[Item], None], mapper: Mapper, key: str) -> Callable[[Item], None]:
    def run(item: Item) -> None:
        if not isinstance(item, Declaration):
            mapper._unexpected("group", item, f"'{key}: ...'")
            return
        fn(item)
    return run

