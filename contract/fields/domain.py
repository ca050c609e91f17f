"""domain(suffix:, full:, keyword:, regex:, geosite:, ext:): the names DNS bound to the destination.

Each call is its own domain set (one bit of the per-address bitmap), so two calls in one rule are
never intersected."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.DOMAIN, ("domain",), "domain", lambda f: f.domain_bits, merges=False)
