"""A diagnostic's message and hint are masked by the same rule as its source line.

compiler/diagnostics.py once defined its own, older `mask_secrets` below the import of
`urls.mask_secrets`, so messages and hints went through the weaker rule: a password holding '/'
(standard base64) was shown from the '/' on. These render a Diagnostic and a CompileError directly.
"""
from __future__ import annotations

from dae_py.compiler.diagnostics import CompileError, Diagnostic, Diagnostics, Severity, SourcePos
from dae_py.compiler.urls import mask_secrets

LINK = "ss://user:pa/ss+wo#rd@host.example:8388"
POS = SourcePos("config.yaml", 3, 5)


def test_message_and_hint_hide_the_whole_user_info() -> None:
    text = Diagnostic(Severity.ERROR, POS, f"bad node {LINK}", hint=f"try {LINK}").render()
    assert "pa/ss" not in text and "wo#rd" not in text and "user" not in text
    assert text.splitlines()[0] == f"config.yaml:3:5: error: bad node {mask_secrets(LINK)}"
    assert text.splitlines()[-1] == f"  hint: try {mask_secrets(LINK)}"


def test_compile_error_message_is_masked_like_the_renderer() -> None:
    err = CompileError(Diagnostics([Diagnostic(Severity.ERROR, POS, f"bad node {LINK}")]))
    assert str(err) == f"config.yaml:3:5: bad node {mask_secrets(LINK)}"
    assert "pa/ss" not in str(err)
