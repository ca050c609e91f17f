"""What the per-kind field implementations share: the checker they report to, and key checks."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..diagnostics import SourcePos
from ..rules import Call, Param

if TYPE_CHECKING:
    from ..check import RoutingChecker

Locate = Callable[[int], SourcePos]


def no_key(checker: RoutingChecker, call: Call, p: Param, locate: Locate) -> bool:
    """False (and an error) when a parameter of a function without keys has one."""
    if p.key is not None:
        checker.diags.error(locate(p.offset), f"'{call.name}()' does not take key '{p.key}'")
        return False
    return True
