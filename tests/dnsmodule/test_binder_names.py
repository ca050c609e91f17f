"""The binder's fast name text (the names the domain matcher sees) equals dnspython's to_text
for every name: plain ones take the fast path, anything to_text would escape falls back."""
from __future__ import annotations

import dns.name
from hypothesis import given, settings
from hypothesis import strategies as st

from dae_py.runtime.dns.binder import name_text

LABEL = st.one_of(st.binary(min_size=1, max_size=12),
                  st.text("abcXYZ019-_*.", min_size=1, max_size=12).map(str.encode))


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(LABEL, min_size=0, max_size=5), st.booleans())
def test_name_text_is_to_text(labels: list[bytes], absolute: bool) -> None:
    name = dns.name.Name([*labels, b""] if absolute else labels)
    assert name_text(name) == name.to_text()


def test_usual_names() -> None:
    for text in ("h1.proxied.test.", "*.x.test.", ".", "A-b_c.Test.", "a\\.b.test.", "x\\032y.test."):
        n = dns.name.from_text(text)
        assert name_text(n) == n.to_text() == text
