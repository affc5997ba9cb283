"""The man pages: committed in docs/man as `make man` renders them from their
sources and the argument parsers, readable by man(1), naming every option.

tests/test_wheel.py checks that `pip install` puts them in share/man/man1.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import require

from dockerfs_fuse.lifecycle import cli, options
from dockerfs_fuse.ninep import cli as ninep_cli

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "docs" / "man"
PAGES = ["dockerfs-fuse.1", "dockerfs-9p.1"]


@pytest.mark.parametrize("page", PAGES)
def test_committed_page_is_what_make_man_renders(tmp_path: Path, page: str) -> None:
    """A change to a page's source, an option or the -o table needs `make man`."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-man"), str(tmp_path)], check=True, timeout=60
    )
    assert (MAN / page).read_text() == (tmp_path / page).read_text(), (
        f"docs/man/{page} lags its source or the parsers: run `make man` and commit it"
    )


def _rendered(page: Path) -> tuple[str, str]:
    res = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        text=True,
        env={**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""},
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout, res.stderr


@pytest.mark.parametrize("page", PAGES)
def test_man_pages_render_without_warnings(page: str) -> None:
    require(shutil.which("man") is not None, "man missing (Debian man-db, groff-base)")
    text, warnings = _rendered(MAN / page)
    assert warnings == ""
    assert "SYNOPSIS" in text and "OPTIONS" in text


@pytest.mark.parametrize(
    ("page", "make_parser"),
    [("dockerfs-fuse.1", cli.parser), ("dockerfs-9p.1", ninep_cli.parser)],
)
def test_man_page_lists_every_option(
    page: str, make_parser: Callable[[], argparse.ArgumentParser]
) -> None:
    require(shutil.which("man") is not None, "man missing (Debian man-db, groff-base)")
    text, _ = _rendered(MAN / page)
    text = re.sub(r".\x08", "", text).replace("\u2010", "-")
    parser = make_parser()
    for action in parser._actions:
        internal = action.help == argparse.SUPPRESS  # not for users: --help hides it too
        for spelled in action.option_strings:
            shown = re.search(rf"(^|[\s,\[]){re.escape(spelled)}\b", text, re.M)
            assert bool(shown) != internal, spelled
    if page == "dockerfs-fuse.1":
        for opt in options.table():
            assert opt.name in text, opt.name
