"""pyroute2 without its package __init__: the runtime uses IPRoute and NetlinkError only.

`import pyroute2.<anything>` first runs pyroute2/__init__.py, which imports ~160 modules
(NDB with sqlite3, IPDB, ethtool, nl80211, IPVS, WireGuard, ...): about 6 MB of RSS the
gateway would keep for its whole life (bench/RESULTS.md, issue 15). `lean()` puts a package
object in its place that finds the same submodules (the real package's __path__ and spec), so
`from pyroute2.iproute import IPRoute` loads what IPRoute needs and no more. Anyone asking the
package itself for a name its __init__ defines (`from pyroute2 import NDB`) still gets it: the
first such lookup runs the real __init__ in the package (PEP 562 module __getattr__), after
which it is the ordinary package. Nothing changes if pyroute2 was imported already.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from collections.abc import Iterable


def _is_submodule(path: Iterable[str], name: str) -> bool:
    return any(os.path.exists(os.path.join(d, name + ".py")) or os.path.isdir(os.path.join(d, name))
               for d in path)


def lean() -> None:
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        return  # not installed as a plain package: the ordinary import reports what is wrong
    pkg = types.ModuleType("pyroute2")
    pkg.__file__ = spec.origin
    pkg.__path__ = list(spec.submodule_search_locations)
    pkg.__spec__ = spec
    pkg.__package__ = "pyroute2"
    origin = spec.origin

    def full(name: str) -> object:
        """A name only the real __init__ defines: run it here, once, and look again."""
        if name.startswith("__") or _is_submodule(pkg.__path__, name):
            raise AttributeError(name)  # `from pyroute2 import config`: the import system loads it
        vars(pkg).pop("__getattr__", None)
        with open(origin, "rb") as f:
            code = compile(f.read(), origin, "exec")
        exec(code, vars(pkg))  # pyroute2's own __init__, into its own package
        try:
            return vars(pkg)[name]
        except KeyError:
            raise AttributeError(f"module 'pyroute2' has no attribute {name!r}") from None

    setattr(pkg, "__getattr__", full)  # noqa: B010 - a module's PEP 562 hook, set on a module object
    sys.modules["pyroute2"] = pkg


lean()  # on import: runtime/datapath/__init__.py imports this module before any pyroute2 user
