"""dae's own config format (`.dae`): parsing, mapping, positions, includes and --to-yaml."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dae_py.compiler import cli
from dae_py.compiler.dae_format import load_dae_text, looks_like_dae, to_yaml
from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.load import LoadedConfig, load_config_text
from dae_py.compiler.pipeline import check_config

BASIC = textwrap.dedent("""\
    # a small gateway
    global {
        tproxy_port: 12345
        lan_interface: eth0, 'br-*'
        allow_insecure: false
    }
    node {
        n1: 'socks5://192.0.2.10:1080'
    }
    group {
        proxy {
            filter: name(n1)
            policy: min_moving_avg
        }
    }
    routing {
        dip(224.0.0.0/3, 'ff00::/8') -> direct
        dip(8.8.8.8) &&
            l4proto(tcp) &&  # a comment inside the rule
            dport(1-1023, 8443) -> proxy
        fallback: proxy
    }
""")


def _errors(text: str, name: str = "c.dae") -> list[str]:
    with pytest.raises(CompileError) as exc:
        check_config(load_config_text(text, name))
    return [f"{d.pos}: {d.message}" for d in exc.value.diagnostics.errors]


def test_a_dae_config_maps_to_the_yaml_structure() -> None:
    cfg = load_dae_text(BASIC, "c.dae")
    assert cfg.data == {
        "global": {"tproxy_port": 12345, "lan_interface": ["eth0", "br-*"], "allow_insecure": False},
        "nodes": {"n1": "socks5://192.0.2.10:1080"},
        "groups": {"proxy": {"filter": ["name(n1)"], "policy": "min_moving_avg"}},
        "routing": {"rules": ["dip(224.0.0.0/3, 'ff00::/8') -> direct",
                              "dip(8.8.8.8) && l4proto(tcp) && dport(1-1023, 8443) -> proxy"],
                    "fallback": "proxy"},
    }
    checked = check_config(cfg)
    assert len(checked.ir.rules) == 2


def test_format_is_detected_by_suffix_or_content() -> None:
    assert looks_like_dae("", "x.dae")
    assert not looks_like_dae("global {", "x.yaml")
    assert looks_like_dae("# c\n/* b */\nglobal {\n", "<stdin>")
    assert not looks_like_dae("global:\n  tproxy_port: 1\n", "<stdin>")
    assert load_config_text(BASIC, "<stdin>").data["nodes"] == {"n1": "socks5://192.0.2.10:1080"}


def test_a_problem_inside_a_rule_that_spans_lines_is_reported_at_its_line_and_column() -> None:
    bad = BASIC.replace("dport(1-1023, 8443)", "dprt(1-1023, 8443)")
    assert _errors(bad) == ["c.dae:20:9: unknown function 'dprt'"]
    bad = BASIC.replace("8443) -> proxy", "8443) -> prxy")
    assert _errors(bad) == ["c.dae:20:32: unknown outbound or group 'prxy'"]


def test_values_point_at_their_own_position() -> None:
    assert _errors(BASIC.replace("tproxy_port: 12345", "tproxy_port: 99999")) == [
        "c.dae:3:18: global/tproxy_port: 99999 is greater than the maximum of 65535"]
    assert _errors(BASIC.replace("tproxy_port", "tproxy_prot")) == ["c.dae:3:5: unknown option 'tproxy_prot' in global"]
    assert _errors(BASIC.replace("filter: name(n1)", "filter: nam(n1)")) == [
        "c.dae:12:17: unknown filter function 'nam'"]
    assert _errors(BASIC.replace("'socks5://192.0.2.10:1080'", "'socks5://192.0.2.10:99999'"))[0].startswith(
        "c.dae:8:")


@pytest.mark.parametrize(("text", "where", "message"), [
    ("global {\n  c: ::1\n}\n", "c.dae:2:6", "syntax error: unexpected ':'"),
    ("routing {\n  dip(1.1.1.1 -> direct\n}\n", "c.dae:2:15", "syntax error: unexpected '->'; expected ')' or ','"),
    ("routing {\n  fallback: 'direct\n}\n", "c.dae:2:13", "unterminated quoted value"),
    ("routing {\n  fallback: direct\n}}\n", "c.dae:3:2", "syntax error: unexpected '}'"),
    ("routing {\n  fallback: direct\n", "c.dae:3:1", "syntax error: unexpected end of file"),
    ("rooting {\n  fallback: direct\n}\n", "c.dae:1:1", "unknown section 'rooting'"),
    ("routing {\n  fallback: direct\n  l4proto(tcp)\n}\n", "c.dae:4:1", "syntax error: unexpected '}'; expected '->'"),
    ("routing {\n  fallback: direct\n  direct\n}\n", "c.dae:3:3", "routing { } does not take value 'direct'"),
    ("global { tproxy_port: 1 }\nx: y\nrouting { fallback: direct }\n", "c.dae:2:1", "a value outside any section"),
    ("group {\n  g { policy: random\n    filter: name(a) [bad: 1] }\n}\nrouting { fallback: direct }\n",
     "c.dae:3:22", "unknown filter option 'bad'"),
])
def test_errors_have_exact_positions(text: str, where: str, message: str) -> None:
    errs = _errors(text)
    assert any(e.startswith(f"{where}: {message}") for e in errs), errs


def test_each_item_of_a_list_option_keeps_its_position() -> None:
    cfg = load_dae_text("global {\n  lan_interface: eth0\n  tcp_check_url: 'http://x, 1.1.1.1, nope:9'\n}\n"
                        "routing { }\n", "c.dae")
    assert cfg.data["global"]["tcp_check_url"] == ["http://x", "1.1.1.1", "nope:9"]
    assert str(cfg.pos.in_string(("global", "tcp_check_url", 2), 0)) == "c.dae:3:38"
    assert str(cfg.pos.value(("global", "tcp_check_url"))) == "c.dae:3:18"


def test_dae_defaults_fill_in_missing_fallbacks() -> None:
    cfg = load_dae_text("dns {\n upstream { a: 'udp://192.0.2.53:53' }\n routing { request { } response { } }\n}\n"
                        "routing { }\n", "c.dae")
    assert cfg.data["routing"] == {"rules": [], "fallback": "direct"}
    assert cfg.data["dns"]["routing"] == {"request": {"rules": [], "fallback": "asis"},
                                          "response": {"rules": [], "fallback": "accept"}}


def test_default_is_the_fallbacks_other_name() -> None:
    cfg = load_dae_text("routing {\n  dport(1) -> block\n  default: direct\n}\n", "c.dae")
    assert cfg.data["routing"]["fallback"] == "direct"


def test_a_dae_option_this_project_lacks_is_a_warning_at_its_line() -> None:
    cfg = load_dae_text("global {\n  lan_interface: eth0\n  pprof_port: 0\n  udphop_interval: 30s\n}\nrouting { }\n",
                        "c.dae")
    checked = check_config(cfg)
    warned = {str(d.pos): d.message for d in checked.diags.warnings}
    for line, key in ((3, "pprof_port"), (4, "udphop_interval")):
        if key not in cfg.data["global"]:  # until the schema knows it; then the capability table warns
            assert f"global.{key} is a dae option" in warned[f"c.dae:{line}:3"]
    assert "pprof_port: 0  # ignored" in to_yaml("global {\n  pprof_port: 0\n}\nrouting { }\n", "c.dae") or (
        "pprof_port" in load_dae_text("global {\n  pprof_port: 0\n}\nrouting { }\n", "c.dae").data["global"])


def test_unnamed_nodes_and_subscriptions_get_names_with_a_warning() -> None:
    cfg = load_dae_text(textwrap.dedent("""\
        node {
            'socks5://192.0.2.1:1080#myname'
            'socks5://192.0.2.2:1080'
            https://example.com/x
        }
        subscription {
            'file://sub.txt'
            tagged: 'https-file://example.com/s'
        }
        routing { }
    """), "c.dae")
    assert list(cfg.data["nodes"]) == ["myname", "node_2", "node_3"]
    assert cfg.data["nodes"]["node_3"] == "https://example.com/x"  # dae reads it as `https: //example.com/x`
    assert cfg.data["subscriptions"] == {"subscription_1": "file://sub.txt", "tagged": "https://example.com/s"}
    messages = [f"{d.pos}: {d.message}" for d in cfg.load_warnings]
    assert any(m.startswith("c.dae:3:5: this node has no name; it is called 'node_2'") for m in messages), messages
    assert any(m.startswith("c.dae:8:13: subscription https-file://") for m in messages), messages


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _load(path: Path) -> LoadedConfig:
    return load_config_text(path.read_text(), str(path))


def test_includes_merge_sections_in_daes_order(tmp_path: Path) -> None:
    _write(tmp_path, {
        "config.dae": "include {\n  conf.d/*.dae\n}\nrouting {\n  dport(1) -> direct\n  fallback: block\n}\n",
        "conf.d/a.dae": "routing {\n  dport(2) -> direct\n}\ninclude { conf.d/sub/c.dae }\n",
        "conf.d/b.dae": "routing {\n  dport(3) -> direct\n}\nglobal { lan_interface: eth0 }\n",
        "conf.d/sub/c.dae": "routing {\n  dport(4) -> direct\n}\n",
        "conf.d/ignored.txt": "not a dae file",
    })
    cfg = load_config_text((tmp_path / "config.dae").read_text(), str(tmp_path / "config.dae"))
    assert cfg.data["routing"]["rules"] == ["dport(1) -> direct", "dport(2) -> direct", "dport(4) -> direct",
                                            "dport(3) -> direct"]
    assert cfg.data["global"] == {"lan_interface": ["eth0"]}
    checked = check_config(cfg)
    # a problem in an included file is reported in that file
    (tmp_path / "conf.d/sub/c.dae").write_text("routing {\n  dprt(4) -> direct\n}\n")
    with pytest.raises(CompileError) as exc:
        check_config(load_config_text((tmp_path / "config.dae").read_text(), str(tmp_path / "config.dae")))
    assert [str(d.pos) for d in exc.value.diagnostics.errors] == [f"{tmp_path}/conf.d/sub/c.dae:2:3"]
    assert len(checked.ir.rules) == 4


@pytest.mark.parametrize(("files", "where", "message"), [
    ({"config.dae": "include { a.dae }\nrouting { }\n", "a.dae": "include { config.dae }\n"},
     "a.dae:1:11", "circular include: {d}/config.dae -> {d}/a.dae -> {d}/config.dae"),
    ({"config.dae": "include { a.dae }\nrouting { }\n", "a.dae": "include { a.dae }\n"},
     "a.dae:1:11", "circular include: {d}/a.dae -> {d}/a.dae"),
    ({"config.dae": "include {\n  missing.dae\n}\nrouting { }\n"}, "config.dae:2:3",
     "include 'missing.dae': no such file"),
    ({"config.dae": "include { a.yaml }\nrouting { }\n", "a.yaml": ""}, "config.dae:1:11",
     "include 'a.yaml': an included file's name must end in .dae"),
    ({"config.dae": "include { ../x.dae }\nrouting { }\n"}, "config.dae:1:11", "include '{d}/../x.dae' is outside"),
    ({"config.dae": "include { a.dae }\nrouting { }\n", "a.dae": "routing { dip( }\n"}, "a.dae:1:16",
     "syntax error: unexpected '}'"),
    ({"config.dae": "include { a.dae\n b.dae }\nrouting { }\n", "a.dae": "include { b.dae }\n", "b.dae": ""},
     "config.dae:2:2", "'{d}/b.dae' is included twice"),
])
def test_include_problems_are_diagnostics(tmp_path: Path, files: dict[str, str], where: str, message: str) -> None:
    (tmp_path / "sub").mkdir()
    base = tmp_path / "sub"
    _write(base, files)
    if "../x.dae" in files["config.dae"]:
        (tmp_path / "x.dae").write_text("routing { }\n")
    with pytest.raises(CompileError) as exc:
        _load(base / "config.dae")
    got = [f"{d.pos}: {d.message}" for d in exc.value.diagnostics.errors]
    want = f"{base}/{where}: {message.replace('{d}', str(base))}"
    assert any(g.startswith(want) for g in got), (got, want)


def test_a_glob_that_matches_nothing_is_a_warning(tmp_path: Path) -> None:
    _write(tmp_path, {"config.dae": "include { conf.d/*.dae }\nrouting { }\n"})
    cfg = _load(tmp_path / "config.dae")
    assert [d.message for d in cfg.load_warnings] == ["include 'conf.d/*.dae' matches no .dae file"]


def test_to_yaml_loads_back_to_the_same_config() -> None:
    text = BASIC.replace("global {", "global {\n    pprof_port: 0\n    mptcp: false")
    yaml_text = to_yaml(text, "c.dae")
    assert "\n  pprof_port: 0\n  mptcp: false\n" in yaml_text  # options the schema knows pass through
    assert load_config_text(yaml_text, "c.yaml").data == load_dae_text(text, "c.dae").data


def test_a_kept_option_that_spans_lines_stays_a_comment() -> None:
    text = "global {\n  pprof_port: '1\nrouting: {}'\n}\nrouting { fallback: block }\n"
    yaml_text = to_yaml(text, "c.dae")
    if "pprof_port" not in load_dae_text(text, "c.dae").data.get("global", {}):
        assert "# pprof_port: 1\\x0arouting: {}" in yaml_text
    assert load_config_text(yaml_text, "c.yaml").data == load_dae_text(text, "c.dae").data


def test_cli_to_yaml_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.dae").write_text(BASIC)
    assert cli.main(["--to-yaml", str(tmp_path / "c.dae")]) == cli.EXIT_OK
    out = capsys.readouterr().out
    (tmp_path / "c.yaml").write_text(out)
    assert cli.main(["--check", "-q", str(tmp_path / "c.yaml")]) == cli.EXIT_OK
    assert cli.main(["--check", "-q", str(tmp_path / "c.dae")]) == cli.EXIT_OK
    assert cli.main(["--to-yaml", str(tmp_path / "c.yaml")]) == cli.EXIT_REJECTED


def test_cli_shows_the_included_files_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, {"config.dae": "include { r.dae }\nglobal { lan_interface: eth0 }\n",
                      "r.dae": "routing {\n  dprt(4) -> direct\n}\n"})
    assert cli.main(["--check", str(tmp_path / "config.dae")]) == cli.EXIT_REJECTED
    err = capsys.readouterr().err
    assert f"{tmp_path}/r.dae:2:3: error: unknown function 'dprt'\n    dprt(4) -> direct\n    ^" in err
