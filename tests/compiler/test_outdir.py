"""`dae-compile CONFIG -o PATH` writes only into an absent or empty directory or a previous build
(issue 12): every other PATH is refused with the path named, exit status 1, and every file under
the test's home is byte for byte what it was."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dae_py.compiler import cli
from dae_py.compiler.outdir import OutputDirError, check_output_dir, staging_dir, swap_in
from tests.compiler.test_hardening import config

Tree = dict[str, bytes | str]


def tree(d: Path) -> Tree:
    """Every entry under `d`: file bytes, link targets, directories, and each entry's inode (a
    replaced file with the same bytes would still be a change)."""
    out: Tree = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = ("-> " + os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
        out[rel + "@ino"] = str(os.lstat(p).st_ino)
    return out


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    """A $HOME-like folder: dotfiles, documents, a project holding the config, a previous build."""
    h = tmp_path / "home"
    (h / "project").mkdir(parents=True)
    (h / "Documents").mkdir()
    (h / ".bashrc").write_text("alias ll='ls -l'\n")
    (h / ".ssh").mkdir()
    (h / ".ssh" / "id_ed25519").write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\n\x00\x01\n")
    (h / "Documents" / "thesis.tex").write_text("years of work\n")
    (h / "project" / "config.yaml").write_text(config())
    (h / "empty").mkdir()
    return h


def compile_to(home: Path, target: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = cli.main([str(home / "project" / "config.yaml"), "-o", str(target), "-q"])
    return rc, capsys.readouterr().err


def refused(home: Path, target: Path, reason: str, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(home)
    rc, err = compile_to(home, target, capsys)
    assert rc == 1, err
    assert err.startswith(f"dae-compile: error: refusing to write the build to {target}: {reason}"), err
    assert tree(home) == before


def test_the_config_file_itself_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(home, home / "project" / "config.yaml", "it exists and is not a directory", capsys)


def test_the_config_folder_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(home, home / "project", "it holds files a build does not write (config.yaml)", capsys)


def test_a_home_folder_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(home, home, "it holds files a build does not write (.bashrc, .ssh, Documents, ...)", capsys)


def test_an_unrelated_non_empty_folder_is_refused(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(home, home / "Documents", "it holds files a build does not write (thesis.tex)", capsys)


def test_a_folder_with_a_manifest_but_no_build_manifest_is_refused(home: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = home / "out"
    out.mkdir()
    (out / "manifest.json").write_text('{"name": "my web app"}\n')
    refused(home, out, "it is not a previous build (no dae-compile manifest.json)", capsys)


@pytest.mark.parametrize("plant, shown", [
    ("maps/notes.txt", "maps/notes.txt"),  # a file a build never writes, inside a build's folder
    ("include/todo.md", "include/todo.md"),
    ("program.c/", "program.c"),  # a build's name, but a directory
])
def test_a_previous_build_with_a_foreign_entry_is_refused(home: Path, plant: str, shown: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = home / "build"
    assert compile_to(home, out, capsys)[0] == 0
    if plant.endswith("/"):
        (out / plant.rstrip("/")).unlink()
        (out / plant.rstrip("/")).mkdir()
        (out / plant.rstrip("/") / "keep.txt").write_text("mine\n")
    else:
        (out / plant).parent.mkdir(exist_ok=True)
        (out / plant).write_text("mine\n")
    refused(home, out, f"it holds files a build does not write ({shown})", capsys)


def test_a_symlink_to_something_that_is_not_a_build_is_refused(home: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    for name, target in (("to-empty", home / "empty"), ("to-docs", home / "Documents"),
                         ("to-config", home / "project" / "config.yaml"), ("dangling", home / "nothing")):
        link = home / name
        link.symlink_to(target)
        refused(home, link, f"it is a symlink to {target.resolve()}, which is not a previous build", capsys)


def test_a_symlink_to_a_previous_build_replaces_that_build_and_keeps_the_link(
        home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    real = home / "builds" / "1"
    assert compile_to(home, real, capsys)[0] == 0
    first = (real / "program.c").read_text()
    (home / "current").symlink_to(real)
    (home / "project" / "config.yaml").write_text(config('    - "dport(54) -> direct"\n'))
    assert compile_to(home, home / "current", capsys)[0] == 0
    assert os.readlink(home / "current") == str(real)
    assert (real / "program.c").read_text() != first
    assert "dport(54)" in (real / "program.c").read_text()
    assert sorted(p.name for p in (home / "builds").iterdir()) == ["1"]


def test_a_previous_build_is_swapped_whole(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = home / "build"
    assert compile_to(home, out, capsys)[0] == 0
    ino = os.stat(out).st_ino
    before = tree(home / "Documents") | tree(home / ".ssh")
    (home / "project" / "config.yaml").write_text(config('    - "dport(54) -> direct"\n'))
    assert compile_to(home, out, capsys)[0] == 0
    assert os.stat(out).st_ino != ino  # a new directory, renamed over the old one
    assert "dport(54)" in (out / "program.c").read_text()
    assert json.loads((out / "manifest.json").read_text())["format"]
    assert [p.name for p in home.iterdir() if p.name.startswith(".dae-build-") or ".old-" in p.name] == []
    assert tree(home / "Documents") | tree(home / ".ssh") == before


@pytest.mark.parametrize("target", ["new/nested/build", "empty"])
def test_an_absent_or_empty_directory_is_written(home: Path, target: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    before = {k: v for k, v in tree(home).items() if not k.startswith(target.split("/")[0])}
    assert compile_to(home, home / target, capsys)[0] == 0
    written = tree(home / target)
    assert {"manifest.json", "program.o", "program.c", "ir.json"} <= written.keys()
    assert {k: v for k, v in tree(home).items() if not k.startswith(target.split("/")[0])} == before


def test_an_output_under_a_file_is_an_error_naming_it(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(home)
    under_a_file = home / "project" / "config.yaml" / "build"
    rc, err = compile_to(home, under_a_file, capsys)
    assert rc == 1
    assert err.startswith(f"dae-compile: error: cannot write the build to {under_a_file}"), err
    assert tree(home) == before


def test_check_writes_nothing_even_when_o_names_the_config(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(home)
    assert cli.main([str(home / "project" / "config.yaml"), "--check", "-o",
                     str(home / "project" / "config.yaml")]) == 0
    assert tree(home) == before


def test_a_folder_that_changed_while_compiling_is_checked_again_before_the_swap(home: Path) -> None:
    out = home / "out"
    out.mkdir()
    assert check_output_dir(out) == out  # empty: fine when the compile starts
    tmp = staging_dir(out)
    (tmp / "manifest.json").write_text("{}")
    (out / "arrived-meanwhile.txt").write_text("new\n")
    before = tree(home)
    with pytest.raises(OutputDirError, match="arrived-meanwhile.txt"):
        swap_in(tmp, out)
    assert not tmp.exists()  # the staged build is removed
    assert {k: v for k, v in tree(home).items() if not k.startswith(tmp.name)} == \
        {k: v for k, v in before.items() if not k.startswith(tmp.name)}
