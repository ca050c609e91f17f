"""Emit a build: generated C (from the Jinja templates), the BPF object, map data and manifest.

The build directory is self-contained and byte-identical for the same config and compiler: the
hand-written headers are copied next to program.c, clang runs with a fixed command line and no
debug paths that depend on the build location, and JSON is written with sorted keys.
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from dae_py.contract import fields
from dae_py.contract.ir import RoutingIR, Rule, max_domain_words
from dae_py.contract.version import COMPILER_VERSION

from .outdir import check_output_dir, staging_dir, swap_in
from .tables import MapTable

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates" / "bpf"
HAND_WRITTEN_HEADERS = ("common.h", "parse.h", "hijack.h", "dns_hijack.h", "datapath.h", "cgroup.h", "wan.h")
CLANG_FLAGS = ["-O2", "-g", "-target", "bpf", "-Wall", "-Wno-unused-function", "-Werror",
               "-fdebug-compilation-dir=.", "-I/usr/include/x86_64-linux-gnu", "-Iinclude"]
FLOW_TABLE_SIZE = 65536
DOMAIN_MAP_SIZE = 65536
SOCKMAP_SOURCE = "sockmap.c"  # the relay's kernel pump, one object per build (runtime/relay/sockmap.py)
SOCKMAP_OBJECT = "sockmap.o"
SOCKMARK_SOURCE = "sockmark.c"  # the relay's mark on its plugins' sockets (runtime/datapath/sockmark.py)
SOCKMARK_OBJECT = "sockmark.o"


class EmitError(Exception):
    """clang or the template failed: a compiler bug rather than a config error."""


@dataclass(frozen=True)
class Emitted:
    c_source: str
    tables: list[MapTable]
    strategy: str


@functools.lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)


# The characters of a name (schema: [A-Za-z_][A-Za-z0-9_.-]*) that the macro's upper-case form
# loses, with the letter that records them.
_LOST = {"-": "d", ".": "p"}


def _lost(c: str) -> str:
    """What the macro records for a character it cannot keep: 'd'/'p' for '-'/'.', 'u' for an ASCII
    upper-case letter, and for any other character (`香`) 'c' + its code point in hex + 'z', so that
    names differing only in non-ASCII letters (`香港`, `台湾`) get different macros."""
    if c in _LOST:
        return _LOST[c]
    if c.isascii():
        return "u"
    return f"c{ord(c):x}z"


def outbound_macro(name: str) -> str:
    """A C identifier for an outbound, one-to-one with its name.

    Names of lower-case letters, digits and '_' (`proxy`, `my_group`) read as they always did:
    OUTBOUND_PROXY. Any other name gets a suffix that records, per position, what the upper-case
    form lost (`h-k` -> OUTBOUND_H_K_x1d, `h.k` -> OUTBOUND_H_K_x1p, `HK` -> OUTBOUND_HK_x0u1u):
    the suffix holds lower-case letters, which no plain name's macro does, so `h-k` and `h_k`
    (or `Proxy` and `proxy`) no longer become one identifier.
    """
    safe = "".join(c.upper() if c.isascii() and c.isalnum() else "_" for c in name)
    lost = "".join(f"{i}{_lost(c)}" for i, c in enumerate(name)
                   if c in _LOST or c.isupper() or not (c.isascii() and (c.isalnum() or c == "_")))
    return f"OUTBOUND_{safe}" + (f"_x{lost}" if lost else "")


def _comment(text: str) -> str:
    return text.replace("*/", "* /").replace("\n", " ")


def base_context(ir: RoutingIR, config_name: str, config_sha256: str, strategy: str,
                 settings: dict[str, Any]) -> dict[str, Any]:
    used = ir.fields_used()
    outs = []
    for o in ir.outbounds:
        outs.append({"id": o.id, "name": o.name, "kind": o.kind, "macro": outbound_macro(o.name)})
    fb = ir.fallback
    return {
        "compiler_version": COMPILER_VERSION,
        "config_name": Path(config_name).name,
        "config_sha256": config_sha256,
        "strategy": strategy,
        # need_dip, need_mac, ...: which fields the live rules look at (the templates test some).
        **{f"need_{spec.name}": spec.field in used for spec in fields.FIELDS},
        "domain_words": max_domain_words(ir),
        "domain_map_size": DOMAIN_MAP_SIZE,
        "flow_table_size": int(settings.get("bpf_conn_state_map_size") or FLOW_TABLE_SIZE),
        "tproxy_port": int(settings.get("tproxy_port", 12345)),
        "dns_hijack_port": int(settings.get("dns_hijack_port", 0)),  # dns_rules.hijack_port
        "fwmark": int(settings.get("fwmark", 0x8000000)),
        "so_mark": int(settings.get("so_mark_from_dae", 0)),
        "outbounds": outs,
        # marks the relay's upstream sockets may carry (group(mark: N), direct(mark: N) dialled by
        # the relay): the WAN egress program must not take those sockets for a local process's
        "runtime_marks": sorted({r.action.mark for r in ir.rules if r.action.mark} | ({fb.mark} if fb.mark else set())),
        "rule_fallback": len(ir.rules),
        "dropped": len(ir.rules) - len(ir.live_rules()),
        "fallback": {"out_macro": outbound_macro(fb.outbound), "mark": f"0x{fb.mark:x}" if fb.mark else "0",
                     "must": fb.must, "comment": _comment(f"-> {fb.outbound}"), "where": "routing.fallback"},
    }


def rule_context(rule: Rule, cond: str) -> dict[str, Any]:
    a = rule.action
    return {
        "index": rule.index,
        "where": f"{Path(rule.source.file).name}:{rule.source.line}",
        "comment": _comment(rule.source.shown),
        "cond": cond,
        "must_rules": a.must_rules,
        "must": a.must,
        "out_macro": outbound_macro(a.outbound) if not a.must_rules else "",
        "mark": f"0x{a.mark:x}" if a.mark else "0",
    }


def render(ir: RoutingIR, config_name: str, config_sha256: str, strategy: str,
           settings: dict[str, Any] | None = None) -> Emitted:
    ctx = base_context(ir, config_name, config_sha256, strategy, settings or {})
    if strategy == "linear":
        from .emit_linear import linear_context

        extra, tables = linear_context(ir)
        ctx.update(lpm_groups=extra["lpm_groups"], lpm_families=extra["lpm_families"], port_sets=extra["port_sets"],
                   rules=[rule_context(rc["rule"], rc["cond"]) for rc in extra["rule_conds"]],
                   strategy_template="classify_linear.c.j2")
    else:
        from .emit_bitvector import bitvector_context

        extra, tables = bitvector_context(ir)
        ctx.update(extra)
        ctx["rules"] = [rule_context(r, "") for r in ir.live_rules()]
        ctx["strategy_template"] = "classify_bitvector.c.j2"
    source = _env().get_template("program.c.j2").render(**ctx)
    return Emitted(c_source=source, tables=tables, strategy=strategy)


def _clang(build: Path, source: str, obj: str, what: str) -> None:
    """clang -O2 -target bpf on `source` inside build/ (no absolute path lands in the object);
    `what` names the source in the error."""
    cmd = ["clang", *CLANG_FLAGS, "-c", source, "-o", obj]
    try:
        proc = subprocess.run(cmd, cwd=build, capture_output=True, text=True)
    except FileNotFoundError:
        raise EmitError("clang is not installed (apt-get install clang llvm libbpf-dev)") from None
    if proc.returncode != 0:
        raise EmitError(f"clang failed on {what} (a compiler bug):\n{proc.stderr.strip()}")


def compile_c(build: Path) -> None:
    """The generated program.c -> program.o."""
    _clang(build, "program.c", "program.o", "the generated program")


def compile_standalone(build: Path, source: str, obj: str) -> None:
    """A hand-written object of templates/bpf that is the same for every config (it includes
    nothing of the build), compiled beside program.o and loaded by the runtime on its own."""
    shutil.copyfile(TEMPLATE_DIR / source, build / source)
    _clang(build, source, obj, source)


def compile_sockmap(build: Path) -> None:
    """sockmap.o, the relay's kernel pump (templates/bpf/sockmap.c)."""
    compile_standalone(build, SOCKMAP_SOURCE, SOCKMAP_OBJECT)


def compile_sockmark(build: Path) -> None:
    """sockmark.o, the cgroup program that marks the SIP003 plugins' sockets
    (templates/bpf/sockmark.c); the runtime sets the mark at load."""
    compile_standalone(build, SOCKMARK_SOURCE, SOCKMARK_OBJECT)


def write_build(out_dir: Path, emitted: Emitted, manifest: dict[str, Any], extra_files: dict[str, str]) -> None:
    """Write the build to a temporary directory, then swap it into place (never half a build).
    Raises OutputDirError, changing nothing, when `out_dir` is not a directory a build may replace."""
    target = check_output_dir(out_dir)
    tmp = staging_dir(target)
    try:
        (tmp / "include").mkdir()
        for h in HAND_WRITTEN_HEADERS:
            shutil.copyfile(TEMPLATE_DIR / h, tmp / "include" / h)
        (tmp / "program.c").write_text(emitted.c_source)
        compile_c(tmp)
        compile_sockmap(tmp)
        compile_sockmark(tmp)
        maps_meta = []
        if emitted.tables:
            (tmp / "maps").mkdir()
        for t in emitted.tables:
            rel = f"maps/{t.name}.bin"
            data = t.payload()
            (tmp / rel).write_bytes(data)
            maps_meta.append({"name": t.name, "kind": t.kind, "key_size": t.key_size, "value_size": t.value_size,
                              "entries": len(t.records), "data": rel, "sha256": hashlib.sha256(data).hexdigest()})
        for rel, text in extra_files.items():
            (tmp / rel).write_text(text)
        manifest = {**manifest, "maps": maps_meta,
                    "object_sha256": hashlib.sha256((tmp / "program.o").read_bytes()).hexdigest()}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        (tmp / "manifest.json").chmod(0o600)  # it carries node credentials
        swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
