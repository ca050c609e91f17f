"""What the per-kind field implementations share: the checker they report to, and key checks."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ..diagnostics import SourcePos
from ..rules import Call, Param

if TYPE_CHECKING:
    from ..check import RoutingChecker

Locate = Callable[[int], SourcePos]
T = TypeVar("T")


def no_key(checker: RoutingChecker, call: Call, p: Param, locate: Locate) -> bool:
    """False (and an error) when a parameter of a function without keys has one."""
    if p.key is not None:
        checker.diags.error(locate(p.offset), f"'{call.name}()' does not take key '{p.key}'")
        return False
    return True


def keyless_values(checker: RoutingChecker, call: Call, locate: Locate,
                   parse: Callable[[Param], T]) -> list[T] | None:
    """`parse(p)` of every parameter of a function without keys. A key, or a ValueError from
    `parse`, is an error at the parameter; every parameter is still checked (one run reports
    them all), and then the call has no values (None)."""
    vals: list[T] = []
    ok = True
    for p in call.params:
        if not no_key(checker, call, p, locate):
            ok = False
            continue
        try:
            vals.append(parse(p))
        except ValueError as exc:
            checker.diags.error(locate(p.value_offset), str(exc))
            ok = False
    return vals if ok else None
