"""A compiled build directory as the runtime sees it: manifest, IR, object and map data.

The runtime never re-parses the YAML: everything it needs was written here by dae-compile.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dae_py.contract.version import MANIFEST_FORMAT

if TYPE_CHECKING:  # imported where used: the running gateway only needs them on a map miss
    from dae_py.contract.domains import DomainMatcher
    from dae_py.contract.ir import RoutingIR


class BuildError(Exception):
    pass


@dataclass
class Build:
    path: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path) -> "Build":
        p = Path(path)
        try:
            manifest = json.loads((p / "manifest.json").read_text())
        except FileNotFoundError:
            raise BuildError(f"{p}: not a build directory (no manifest.json); run dae-compile first") from None
        except json.JSONDecodeError as exc:
            raise BuildError(f"{p}/manifest.json is corrupt: {exc}") from None
        except OSError as exc:  # EACCES: the service user is not in the build's group
            raise BuildError(f"cannot read {p}/manifest.json: {exc.strerror}") from None
        if manifest.get("format") != MANIFEST_FORMAT:
            raise BuildError(f"{p}: manifest format {manifest.get('format')} is not {MANIFEST_FORMAT}; "
                             "recompile with this version of dae-compile")
        return cls(p, manifest)

    @property
    def object_path(self) -> Path:
        return self.path / "program.o"

    @cached_property
    def ir(self) -> RoutingIR:
        from dae_py.contract.ir_json import ir_from_json

        return ir_from_json(json.loads((self.path / "ir.json").read_text()))

    @cached_property
    def domain_matcher(self) -> DomainMatcher:
        from dae_py.contract.domains import DomainMatcher

        return DomainMatcher.from_sets(self.ir.domain_sets)

    @property
    def domain_words(self) -> int:
        from dae_py.contract.ir import max_domain_words

        return max_domain_words(self.ir)

    def outbound_name(self, oid: int) -> str:
        for o in self.manifest["outbounds"]:
            if o["id"] == oid:
                return str(o["name"])
        return f"#{oid}"

    def rule(self, index: int) -> dict[str, Any] | None:
        for r in self.manifest["rules"]:
            if r["index"] == index:
                return r
        return None

    def map_tables(self) -> list[tuple[dict[str, Any], bytes]]:
        return [(m, (self.path / m["data"]).read_bytes()) for m in self.manifest["maps"]]


def load_tables(obj: Any, build: Build) -> None:
    """Bulk-load the compiler's map contents (LPM tries, port bitmaps) into a loaded object."""
    for meta, data in build.map_tables():
        m = obj.map(meta["name"])
        rec = meta["key_size"] + meta["value_size"]
        n = meta["entries"]
        keys = b"".join(data[i * rec: i * rec + meta["key_size"]] for i in range(n))
        vals = b"".join(data[i * rec + meta["key_size"]: (i + 1) * rec] for i in range(n))
        if n:
            m.update_batch(keys, vals, n)
