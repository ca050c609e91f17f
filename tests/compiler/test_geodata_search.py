"""geoip.dat / geosite.dat (and relative ext: files) are found where dae and v2ray look:
global.asset_dir, $DAE_LOCATION_ASSET, the config's folder, $XDG_DATA_HOME/dae, $XDG_DATA_DIRS/dae
(/usr/local/share/dae, /usr/share/dae), $V2RAY_LOCATION_ASSET, /usr/local/share/v2ray,
/usr/share/v2ray; and "not found" lists every folder it looked in."""
from __future__ import annotations

from pathlib import Path

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.geodata import GeoDataError, SiteDomain, asset_search_dirs, find_asset, write_geosite
from dae_py.compiler.pipeline import Checked, compile_config

RULE = "global: {{lan_interface: [eth0]{extra}}}\nrouting:\n  rules: ['{rule}']\n  fallback: direct\n"


def _put(path: Path, entries: dict[str, list[SiteDomain]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_geosite(path, entries)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A clean environment: XDG_DATA_HOME and XDG_DATA_DIRS under tmp_path, no asset variables."""
    for var in ("DAE_LOCATION_ASSET", "V2RAY_LOCATION_ASSET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home-share"))
    monkeypatch.setenv("XDG_DATA_DIRS", f"{tmp_path / 'local-share'}:{tmp_path / 'share'}")
    return tmp_path


def test_the_search_order_is_dae_then_v2ray() -> None:
    env = {"DAE_LOCATION_ASSET": "/opt/assets", "HOME": "/home/u", "V2RAY_LOCATION_ASSET": "/opt/v2"}
    assert asset_search_dirs("/etc/dae", "geo", env) == tuple(Path(p) for p in (
        "/etc/dae/geo", "/opt/assets", "/etc/dae", "/home/u/.local/share/dae", "/usr/local/share/dae",
        "/usr/share/dae", "/opt/v2", "/usr/local/share/v2ray", "/usr/share/v2ray"))
    assert asset_search_dirs("/etc/dae", None, {"XDG_DATA_HOME": "/x"})[:2] == (Path("/etc/dae"), Path("/x/dae"))


def test_not_found_names_every_folder_looked_in(tmp_path: Path) -> None:
    dirs = (tmp_path / "a", tmp_path / "b")
    with pytest.raises(GeoDataError) as info:
        find_asset("geosite.dat", dirs, "geosite")
    assert str(info.value) == f"geosite file 'geosite.dat' not found; looked in: {dirs[0]}, {dirs[1]}"


def _compile(cfg_dir: Path, rule: str, extra: str = "") -> Checked:
    cfg_dir.mkdir(parents=True, exist_ok=True)
    return compile_config(None, None, text=RULE.format(rule=rule, extra=extra), name=str(cfg_dir / "config.yaml"))


@pytest.mark.parametrize("where", ["home-share/dae", "share/dae", "local-share/dae"])
def test_geosite_dat_is_found_in_the_xdg_data_folders(env: Path, where: str) -> None:
    _put(env / where / "geosite.dat", {"cn": [SiteDomain("domain", "cn")]})
    checked = _compile(env / "etc", "domain(geosite:cn) -> direct")
    assert checked.ir.domain_sets[0].suffix == ("cn",)


def test_the_configs_folder_wins_over_the_data_folders(env: Path) -> None:
    _put(env / "share" / "dae" / "geosite.dat", {"cn": [SiteDomain("domain", "far")]})
    _put(env / "etc" / "geosite.dat", {"cn": [SiteDomain("domain", "near")]})
    checked = _compile(env / "etc", "domain(geosite:cn) -> direct")
    assert checked.ir.domain_sets[0].suffix == ("near",)


def test_asset_dir_wins_over_the_configs_folder(env: Path) -> None:
    _put(env / "etc" / "geosite.dat", {"cn": [SiteDomain("domain", "near")]})
    _put(env / "geo" / "geosite.dat", {"cn": [SiteDomain("domain", "chosen")]})
    checked = _compile(env / "etc", "domain(geosite:cn) -> direct", f", asset_dir: '{env / 'geo'}'")
    assert checked.ir.domain_sets[0].suffix == ("chosen",)


def test_a_relative_ext_file_is_searched_too(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(env / "v2"))
    _put(env / "v2" / "mine.dat", {"t": [SiteDomain("full", "x.example")]})
    checked = _compile(env / "etc", 'domain(ext:"mine.dat:t") -> direct')
    assert checked.ir.domain_sets[0].full == ("x.example",)


def test_a_missing_file_is_an_error_at_the_rule_listing_where_it_looked(env: Path) -> None:
    with pytest.raises(CompileError) as info:
        _compile(env / "etc", "domain(geosite:cn) -> direct")
    (err,) = info.value.diagnostics.errors
    assert (err.pos.line, err.pos.col) == (3, 19)
    assert err.message.startswith("geosite file 'geosite.dat' not found; looked in: ")
    for d in (env / "etc", env / "home-share" / "dae", env / "local-share" / "dae", env / "share" / "dae",
              Path("/usr/local/share/v2ray"), Path("/usr/share/v2ray")):
        assert str(d) in err.message
