"""Hostile and odd inputs: each gets a positioned diagnostic and exit status 1, never a traceback.

One test per crash class found by fuzzing (issue 16) with its minimal input, the resource bounds
(alias bombs, backtracking regexes, /dev/zero subscriptions), identifiers that collide in C, stdin,
credentials in messages, the exit statuses, option values the runtime cannot run, and what `-o`
may replace (issue 12).
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dae_py.compiler import cli
from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.emit import outbound_macro
from dae_py.compiler.pipeline import compile_config
from dae_py.compiler.urls import mask_secrets, mask_with_column
from dae_py.contract.userregex import compile_user_regex
from tests.compiler.test_diagnostics import HEAD

REPO = Path(__file__).resolve().parents[2]


def config(rules: str = '    - "dport(53) -> direct"\n', head: str = HEAD, tail: str = "") -> str:
    return head + rules + "  fallback: proxy\n" + tail


def first_error(text: str, tmp_path: Path | None = None) -> str:
    """The first rendered error line of a config that must be rejected with a diagnostic."""
    if tmp_path is not None:
        (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(CompileError) as info:
        compile_config(None if tmp_path is None else tmp_path / "config.yaml", None,
                       text=text if tmp_path is None else None)
    return next(line for line in info.value.diagnostics.render(text).splitlines() if ": error: " in line)


# ---- the eight crash classes -------------------------------------------------------------------
def test_a_bad_escape_in_a_quoted_rule_value_is_a_syntax_error_at_the_escape() -> None:
    line = first_error(config("    - 'domain(\"a\\x\") -> direct'\n"))
    # the rule starts in column 8; `\x` is its 10th character
    assert line == "config.yaml:8:17: error: syntax error: invalid escape '\\\\x' in a quoted value"


def test_an_escape_that_makes_a_lone_surrogate_is_rejected() -> None:
    assert "invalid escape '\\\\ud800'" in first_error(config("    - 'pname(\"\\ud800\") -> direct'\n"))


def test_a_yaml_surrogate_escape_in_pname_is_rejected() -> None:
    assert first_error(config('    - "pname(\\ud800) -> direct"\n')) == (
        "config.yaml:8:7: error: invalid YAML: the value contains a lone surrogate escape (no UTF-8 form)")


def test_non_ascii_in_a_quoted_rule_value_is_kept_as_written() -> None:
    checked = compile_config(None, None, text=config("    - 'pname(\"caf\u00e9\") -> direct'\n"))
    assert checked.ir.pnames == ("caf\u00e9",)


@pytest.mark.parametrize("item, message", [
    ("{not: true}", "a match item needs exactly one function besides 'not'"),
    ("{dip: 1.1.1.1, dport: 80}", "a match item needs exactly one function, not 2 (dip, dport)"),
])
def test_a_structured_match_item_needs_exactly_one_function(item: str, message: str) -> None:
    got = first_error(config(f"    - {{match: [{item}], outbound: direct}}\n"))
    assert got == f"config.yaml:8:16: error: {message}"


def test_a_node_link_with_a_bad_ipv6_bracket_is_an_error_at_the_node() -> None:
    line = first_error(config(head=HEAD.replace("socks5://192.0.2.10:1080", "socks5://[::1:1080")))
    assert line.startswith("config.yaml:3:7: error: node 'n1': invalid URL")


def test_a_dns_upstream_with_a_bad_ipv6_bracket_is_an_error_at_the_upstream() -> None:
    line = first_error(config(tail="dns:\n  upstream:\n    a: 'udp://[::1'\n"))
    assert line.startswith("config.yaml:12:8: error: dns upstream 'a': invalid URL")


def test_yaml_merge_keys_work_and_their_keys_are_positioned_at_the_mapping() -> None:
    head = HEAD.replace("  proxy: {policy: random}", "  base: &b {policy: random}\n  proxy:\n    <<: *b")
    checked = compile_config(None, None, text=config(head=head))
    assert [g["name"] for g in checked.groups] == ["base", "proxy"]
    bad = HEAD.replace("  proxy: {policy: random}", "  base: &b {policy: random, check_interval: 0s}\n"
                       "  proxy:\n    <<: *b")
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=config(head=bad))
    # base's own key at its value; the key proxy merged in at proxy's mapping (line 7)
    assert [(d.pos.line, d.pos.col) for d in info.value.diagnostics.errors] == [(5, 45), (7, 5)]


@pytest.mark.parametrize("where", ["rule", "filter"])
def test_a_repeat_count_dae_rejects_is_an_error_not_an_overflow(where: str) -> None:
    if where == "rule":
        text = config('    - "domain(regex: a{4294967296}) -> direct"\n')
    else:
        text = config(head=HEAD.replace("{policy: random}", "{policy: random, filter: 'name(regex: a{4294967296})'}"))
    assert "invalid regex 'a{4294967296}': invalid repeat count '{4294967296}' (at most 1000, as in dae/Go)" in \
        first_error(text)


def test_user_regexes_have_dae_go_re2_semantics() -> None:
    assert compile_user_regex(r"^a\pL+$").search("aé") is not None  # RE2/Go accept \pL; Python's re does not
    for bad in ("(?=x)", r"(a)\1", "a{1001}", "("):  # lookaround, backreference, repeat > 1000
        with pytest.raises(ValueError):
            compile_user_regex(bad)


def test_a_subscription_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "sub.txt").write_bytes(b"socks5://192.0.2.1:1080#\xff\xfe\n")
    line = first_error(config(tail="subscriptions:\n  s: 'file://sub.txt'\n"), tmp_path)
    assert line.endswith("config.yaml:11:6: error: subscription 's': cannot read file://sub.txt: "
                         "subscription is not UTF-8 (invalid start byte at byte 24)")


# ---- resource bounds ---------------------------------------------------------------------------
def test_a_yaml_alias_bomb_is_rejected_before_it_expands() -> None:
    bomb = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        bomb.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = "\n".join(bomb) + "\n" + config()
    assert len(text) < 1200
    assert first_error(text).startswith("config.yaml:1:1: error: invalid YAML: aliases expand the config to more than")


def test_a_backtracking_group_filter_regex_runs_in_linear_time() -> None:
    # `(a+)+$` against 'aaaa...!' takes Python's re exponential time; RE2 is linear. 40 'a's would
    # not finish under re in a lifetime, so finishing at all is the proof.
    names = "".join(f"  {'a' * 40}-{i}: 'socks5://192.0.2.{i}:1080'\n" for i in range(1, 4))
    head = HEAD.replace("  n1: 'socks5://192.0.2.10:1080'\n", names).replace(
        "{policy: random}", "{policy: random, filter: 'name(regex: \"^(a+)+$\")'}")
    checked = compile_config(None, None, text=config(head=head).replace("fallback: proxy", "fallback: direct"))
    assert checked.groups[0]["nodes"] == []


@pytest.mark.parametrize("text, where", [
    ("a: " + "[" * 3000 + "]" * 3000, "1:104: error: invalid YAML: nested deeper than 100 levels of [ ] or { }"),
    ("".join(" " * i + f"k{i}:\n" for i in range(300)), "201:200: error: invalid YAML: nested deeper than 200 columns"),
])
def test_deep_nesting_is_refused_before_the_yaml_parser_recurses(text: str, where: str) -> None:
    assert first_error(text).startswith(f"config.yaml:{where}")


@pytest.mark.parametrize("target, reason", [
    ("/dev/zero", "subscription is not a regular file"),
    ("big.txt", "subscription is larger than 16 MiB"),
])
def test_a_subscription_read_is_bounded(tmp_path: Path, target: str, reason: str) -> None:
    with open(tmp_path / "big.txt", "wb") as fh:
        fh.truncate((16 << 20) + 1)  # sparse: costs no disk
    line = first_error(config(tail=f"subscriptions:\n  s: 'file://{target}'\n"), tmp_path)
    assert line.endswith(reason)


# ---- identifiers -------------------------------------------------------------------------------
def test_outbound_macros_are_one_to_one_with_names_and_plain_names_keep_theirs() -> None:
    assert outbound_macro("proxy") == "OUTBOUND_PROXY"
    assert outbound_macro("my_group") == "OUTBOUND_MY_GROUP"
    names = ["h-k", "h_k", "h.k", "H-k", "HK", "hk", "Proxy", "proxy", "a-", "a_", "DIRECT", "direct"]
    assert len({outbound_macro(n) for n in names}) == len(names)


def test_groups_whose_names_differ_only_in_punctuation_build(tmp_path: Path) -> None:
    head = HEAD.replace("  proxy: {policy: random}", "  h-k: {policy: random}\n  h_k: {policy: random}")
    (tmp_path / "config.yaml").write_text(config(rules='    - "dport(80) -> h-k"\n', head=head).replace(
        "fallback: proxy", "fallback: h_k"))
    rc = cli.main([str(tmp_path / "config.yaml"), "-o", str(tmp_path / "build"), "-q"])
    assert rc == 0
    source = (tmp_path / "build" / "program.c").read_text()
    assert "#define OUTBOUND_H_K_x1d 2" in source and "#define OUTBOUND_H_K 3" in source


# ---- stdin, credentials, exit statuses --------------------------------------------------------
def test_dash_reads_the_config_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(config().encode())))
    assert cli.main(["--check", "-"]) == 0
    assert capsys.readouterr().out == "<stdin>: ok (1 rules)\n"


def test_check_reads_dev_stdin_once() -> None:
    proc = subprocess.run([sys.executable, "-m", "dae_py.compiler.cli", "--check", "/dev/stdin"], input=config(),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "/dev/stdin: ok (1 rules)\n"


def test_node_credentials_never_appear_in_messages_or_echoed_lines(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    head = HEAD.replace("  n1: 'socks5://192.0.2.10:1080'\n", "  n1: 'socks5://user:secret@192.0.2.10:99999'\n"
                        "  n2: 'trojan://hunter2@[::1:443'\n")
    (tmp_path / "config.yaml").write_text(config(head=head))
    assert cli.main(["--check", str(tmp_path / "config.yaml")]) == 1
    err = capsys.readouterr().err
    assert "invalid port in 'socks5://***@192.0.2.10:99999'" in err
    assert "  n1: 'socks5://***@192.0.2.10:99999'" in err
    assert "secret" not in err and "hunter2" not in err and "user" not in err


def test_masking_keeps_the_caret_under_the_token_after_a_secret() -> None:
    line = "  n1: 'socks5://user:secret@192.0.2.10:x'"
    masked, col = mask_with_column(line, line.index("x"))
    assert masked == "  n1: 'socks5://***@192.0.2.10:x'" and masked[col] == "x"
    assert mask_secrets("vmess://eyJhZGQiOiIxLjIuMy40In0=") == "vmess://***"
    assert mask_secrets("ss://YWVzLTEyOC1nY206cGFzcw@h:1") == "ss://***@h:1"
    line = "  n2: 'ss://YWVz/LTEy+cGFz==@h:x'"  # standard base64 in the user info
    masked, col = mask_with_column(line, line.index("x"))
    assert masked == "  n2: 'ss://***@h:x'" and masked[col] == "x"


def test_help_documents_the_exit_statuses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "exit status:" in out and "1  the config was rejected" in out and "2  an internal error" in out


def test_an_internal_error_exits_2_with_one_line_and_no_traceback(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: Path) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom socks5://u:pw@h:1")

    monkeypatch.setattr(cli, "compile_config", broken)
    (tmp_path / "config.yaml").write_text(config())
    assert cli.main(["--check", str(tmp_path / "config.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dae-compile: internal error: RuntimeError at test_hardening.py:")
    assert "Traceback" not in err and "pw" not in err and err.count("\n") == 1


def test_an_unreadable_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.yaml").write_bytes(b"global: \xff\n")
    assert cli.main(["--check", str(tmp_path / "c.yaml")]) == 1
    assert "cannot read config: config is not UTF-8" in capsys.readouterr().err


# ---- option values the runtime cannot run ------------------------------------------------------
@pytest.mark.parametrize("option, message", [
    ("check_interval: 0s", "check_interval: '0s' is out of range (1s to 86400s)"),
    ("check_interval: 0", "check_interval: 0 is out of range (1s to 86400s)"),
    ("check_interval: .nan", "check_interval: nan is not a finite duration"),
    ("check_interval: .inf", "check_interval: inf is not a finite duration"),
    ("check_interval: 100000h", "check_interval: '100000h' is out of range (1s to 86400s)"),
    ("check_tolerance: .inf", "check_tolerance: inf is not a finite duration"),
    ("sniffing_timeout: 2h", "sniffing_timeout: '2h' is out of range (0s to 60s)"),
    ("tcp_check_url: cp.cloudflare.com", "tcp_check_url 'cp.cloudflare.com': expected 'http(s)://host[:port]/path'"),
    ("tcp_check_url: ['http://[::1', '1.1.1.1']", "tcp_check_url 'http://[::1': invalid URL"),
    ("tcp_check_url: ['http://h', 'not-an-ip']", "tcp_check_url: 'not-an-ip' is not an IP address"),
    ("udp_check_dns: ['dns.google:99999']", "udp_check_dns 'dns.google:99999': invalid port"),
    ("udp_check_dns: ['dns.google', 'x']", "udp_check_dns: 'x' is not an IP address"),
])
def test_global_options_the_runtime_cannot_run_are_rejected_at_their_value(option: str, message: str) -> None:
    head = HEAD.replace("global: {lan_interface: [eth0]}", f"global:\n  lan_interface: [eth0]\n  {option}")
    col = len(option.split(":")[0]) + 5
    assert first_error(config(head=head)).startswith(f"config.yaml:3:{col}: error: {message}")


@pytest.mark.parametrize("option, message", [
    ("check_interval: 0s", "check_interval: '0s' is out of range"),
    ("check_interval: .nan", "check_interval: nan is not a finite duration"),
    ("tcp_check_url: [example.com]", "tcp_check_url 'example.com': expected"),
    ("filter: 'name(keyword: n) [add_latency: 9999h]'", "add_latency: '9999h' is out of range"),
])
def test_group_options_the_runtime_cannot_run_are_rejected(option: str, message: str) -> None:
    head = HEAD.replace("{policy: random}", f"{{policy: random, {option}}}")
    line = first_error(config(head=head))
    assert line.startswith("config.yaml:5:") and f"error: {message}" in line


def test_a_bad_global_value_is_reported_once_not_once_per_group() -> None:
    head = HEAD.replace("global: {lan_interface: [eth0]}", "global: {lan_interface: [eth0], check_interval: 0s}")
    head = head.replace("  proxy: {policy: random}", "  proxy: {policy: random}\n  other: {policy: random}")
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=config(head=head))
    assert [d.pos.line for d in info.value.diagnostics.errors] == [1]


# ---- what -o may replace (issue 12) ------------------------------------------------------------
def _tree(d: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = ("-> " + os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    (h / "project").mkdir(parents=True)
    (h / ".bashrc").write_text("alias ll='ls -l'\n")
    (h / "notes.txt").write_text("keep me\n")
    (h / "project" / "config.yaml").write_text(config())
    (h / "empty").mkdir()
    (h / "link").symlink_to(h / "empty")
    return h


@pytest.mark.parametrize("target, reason", [
    ("project/config.yaml", "it exists and is not a directory"),
    ("project", "it holds files a build does not write (config.yaml)"),
    (".", "it holds files a build does not write (.bashrc, empty, link, ...)"),
    ("link", "it is a symlink"),
])
def test_output_that_is_not_a_build_is_refused_and_nothing_changes(home: Path, target: str, reason: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(home)
    rc = cli.main([str(home / "project" / "config.yaml"), "-o", str(home / target)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith(f"dae-compile: error: refusing to write the build to {home / target}: {reason}")
    assert _tree(home) == before


def test_a_directory_with_a_manifest_and_other_files_is_not_a_build(home: Path) -> None:
    out = home / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"format": 1, "compiler_version": "x"}))
    (out / "thesis.tex").write_text("years of work\n")
    before = _tree(home)
    assert cli.main([str(home / "project" / "config.yaml"), "-o", str(out)]) == 1
    assert _tree(home) == before


@pytest.mark.parametrize("target", ["new/build", "empty"])
def test_output_absent_or_empty_is_written_and_a_previous_build_is_replaced(home: Path, target: str) -> None:
    cfg = home / "project" / "config.yaml"
    assert cli.main([str(cfg), "-o", str(home / target), "-q"]) == 0
    first = _tree(home / target)
    assert "manifest.json" in first and "program.o" in first
    cfg.write_text(config('    - "dport(54) -> direct"\n'))
    assert cli.main([str(cfg), "-o", str(home / target), "-q"]) == 0  # a previous build: replaced
    assert _tree(home / target)["program.c"] != first["program.c"]
    assert sorted(p.name for p in (home / target).parent.iterdir() if p.name.startswith(".dae-build-")) == []


def test_a_tag_on_a_sequence_or_mapping_is_an_error_at_it() -> None:
    # found by bench/fuzz_compiler.py: ruamel keeps no item positions in a tagged sequence
    assert first_error("global: {lan_interface: !tag [eth0]}\nrouting: {fallback: direct}\n") == (
        "config.yaml:1:25: error: invalid YAML: '!tag' is read as a YAML tag")


@pytest.mark.parametrize("tail, message", [
    ("x8: 1\n", 'found duplicate key "x8" (while'),  # ruamel's own message formatted both values
    ("? *i\n: 1\n", "a key must be a plain value, not a sequence or mapping"),  # hashed element by element
])
def test_an_alias_bomb_behind_a_duplicate_or_collection_key_is_not_expanded(tail: str, message: str) -> None:
    # found by bench/fuzz_compiler.py (run 2): the 10 s timer fired inside ruamel's duplicate-key check
    bomb = ['x: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        bomb.append(f"x{i}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    assert message in first_error("\n".join(bomb) + "\n" + tail)
