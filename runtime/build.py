"""A compiled build directory as the runtime sees it: manifest, IR, object and map data.

The runtime never re-parses the YAML: everything it needs was written here by dae-compile.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dae_py.contract.manifest import Manifest, MapTable, RuleEntry
from dae_py.contract.version import MANIFEST_FORMAT

if TYPE_CHECKING:  # imported where used: the running gateway only needs them on a map miss
    from dae_py.contract.domains import DomainMatcher
    from dae_py.contract.ir import RoutingIR


class BuildError(Exception):
    pass


@dataclass
class Build:
    """`raw` is manifest.json as read; `manifest` its typed form, read on first use (a value the
    runtime cannot use is a ManifestError there: at start, one line, like any start-up error)."""

    path: Path
    raw: dict[str, Any]

    @cached_property
    def manifest(self) -> Manifest:
        return Manifest.from_json(self.raw)

    @classmethod
    def open(cls, path: str | Path) -> Build:
        p = Path(path)
        try:
            manifest = json.loads((p / "manifest.json").read_text())
        except FileNotFoundError:
            raise BuildError(f"{p}: not a build directory (no manifest.json); run dae-compile first") from None
        except json.JSONDecodeError as exc:
            raise BuildError(f"{p}/manifest.json is corrupt: {exc}") from None
        except OSError as exc:  # EACCES: the service user is not in the build's group
            raise BuildError(f"cannot read {p}/manifest.json: {exc.strerror}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else None
            raise BuildError(f"{p}: manifest format {found} is not {MANIFEST_FORMAT}; "
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
        return self.manifest.outbound_name(oid)

    def rule(self, index: int) -> RuleEntry | None:
        return self.manifest.rule(index)

    def map_tables(self) -> list[tuple[MapTable, bytes]]:
        return [(m, (self.path / m.data).read_bytes()) for m in self.manifest.maps]


def load_tables(obj: Any, build: Build) -> None:
    """Bulk-load the compiler's map contents (LPM tries, port bitmaps) into a loaded object."""
    for meta, data in build.map_tables():
        m = obj.map(meta.name)
        rec = meta.key_size + meta.value_size
        n = meta.entries
        keys = b"".join(data[i * rec: i * rec + meta.key_size] for i in range(n))
        vals = b"".join(data[i * rec + meta.key_size: (i + 1) * rec] for i in range(n))
        if n:
            m.update_batch(keys, vals, n)
