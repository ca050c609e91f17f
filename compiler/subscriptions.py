"""The `subscriptions:` section: name -> `https://`, `http://` or `file://` source, or
name -> `{url: SOURCE, interval: DURATION}` for a refresh interval of its own.

The runtime fetches every source (runtime/subscriptions): at start and then every refresh,
keeping the last good copy on disk. The compiler writes each one into the manifest (a relative
`file://` path resolved against the config's folder) and reads the `file://` ones now too, with
the parser the runtime uses (contract/subformats.py): their nodes join the pool (so groups,
`fixed(N)` and the routing checks see them) and every node dropped from them is listed with the
reason. An `https://` source is not fetched at compile time (builds are offline): groups wait
for its nodes, which is a warning where routing uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from dae_py.contract.manifest import SubscriptionSpec
from dae_py.contract.subformats import MAX_BODY_BYTES, SubscriptionFormatError, parse_body
from dae_py.contract.urls import redact_url

from .diagnostics import Diagnostics
from .load import LoadedConfig
from .options import bounded_duration
from .readfile import read_capped_text
from .urls import split_url

#: How often the runtime fetches a subscription again (dae fetches at start and reload only;
#: mihomo's providers every `interval`, sing-box's every `update_interval`).
DEFAULT_REFRESH_S = 3600.0
#: Dropped nodes listed one warning each, then one line for the rest.
DROPPED_SHOWN = 20


@dataclass
class Subscriptions:
    specs: list[SubscriptionSpec] = field(default_factory=list)
    nodes: list[dict[str, Any]] = field(default_factory=list)  # read now from file:// sources
    remote: list[str] = field(default_factory=list)  # names fetched only by the runtime


def file_path(url: str, base: Path) -> Path:
    """dae reads `file://sub.txt` as a path relative to the config (urlsplit: host 'sub.txt')."""
    u = split_url(url)
    path = Path(unquote(u.path if u.netloc in ("", "localhost") else u.netloc + u.path))
    return path if path.is_absolute() else base / path


def source_url(value: Any) -> str:
    """The URL of a subscription entry in either form (a string, or a mapping with `url`)."""
    return str(value.get("url", "")) if isinstance(value, dict) else str(value)


def refresh_interval(value: Any) -> float:
    """The entry's `interval` in seconds (ValueError when out of range), else the default."""
    if isinstance(value, dict) and "interval" in value:
        return bounded_duration("interval", value["interval"])
    return DEFAULT_REFRESH_S


def check_subscriptions(cfg: LoadedConfig, diags: Diagnostics, taken: set[str], allow_insecure: bool,
                        dialable: frozenset[str]) -> Subscriptions:
    out = Subscriptions()
    base = Path(cfg.file).resolve().parent
    for tag, entry in (cfg.data.get("subscriptions") or {}).items():
        at = cfg.pos.value(("subscriptions", tag))
        url = source_url(entry)
        try:
            refresh_s = refresh_interval(entry)
        except ValueError as exc:
            diags.error(cfg.pos.value(("subscriptions", tag, "interval")), f"subscription '{tag}': {exc}")
            continue
        if isinstance(entry, dict):
            at = cfg.pos.value(("subscriptions", tag, "url"))
        try:
            u = split_url(url)
        except ValueError as exc:
            diags.error(at, f"subscription '{tag}': {exc}")
            continue
        if u.scheme in ("http", "https"):
            if not u.hostname:
                diags.error(at, f"subscription '{tag}': {redact_url(url)} has no host")
                continue
            if u.scheme == "http":
                diags.warning(at, f"subscription '{tag}': fetched over plain http: anyone on the path can "
                                  "read its nodes' passwords and change them", "use https://")
            out.specs.append(SubscriptionSpec(tag, url, refresh_s))
            out.remote.append(tag)
            continue
        path = file_path(url, base)
        out.specs.append(SubscriptionSpec(tag, path.as_uri(), refresh_s))
        try:
            text = read_capped_text(path, MAX_BODY_BYTES, "subscription", regular_only=True)
            parsed = parse_body(tag, text, taken=taken, allow_insecure=allow_insecure, dialable=dialable)
        except OSError as exc:
            diags.error(at, f"subscription '{tag}': cannot read {url}: {exc.strerror or exc}")
            continue
        except (SubscriptionFormatError, ValueError) as exc:
            diags.error(at, f"subscription '{tag}': cannot read {url}: {exc}")
            continue
        for line in parsed.dropped[:DROPPED_SHOWN]:
            diags.warning(at, f"subscription '{tag}': dropped node {line}")
        if len(parsed.dropped) > DROPPED_SHOWN:
            diags.warning(at, f"subscription '{tag}': dropped {len(parsed.dropped) - DROPPED_SHOWN} more nodes "
                              "(`dae-compile --check` lists the first ones)")
        for node in parsed.nodes:
            taken.add(node["name"])
        out.nodes.extend(parsed.nodes)
    return out
