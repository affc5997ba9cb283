"""The wheel holds the product only: no code that starts an engine or sshd as root.

The harness that does (private dockerd, Podman, sshd, a swarm in network
namespaces entered with nsenter; the demos) lives in tests/support and runs
from the checkout. Here the wheel is built from a copy of the sources, and
every string in its Python code that names one of those programs as a value
(a command, what shutil.which looks up) fails the test; the product may still
mention them in messages ("is dockerd running?") or compare against them.
Installed into a fresh venv, the wheel brings both man pages to share/man/man1.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROGRAMS = {"dockerd", "podman", "sshd", "nsenter"}
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
MAN_PAGES = ("dockerfs-fuse.1", "dockerfs-9p.1")


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel .` on a copy, so the build leaves nothing in the checkout."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", *(f"docs/man/{page}" for page in MAN_PAGES)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    out = tmp_path / "wheel"
    res = subprocess.run(
        [*PIP_WHEEL, "-w", str(out), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("build"))


def programs_started(source: str) -> list[str]:
    """The PROGRAMS that string constants name (bare or as a path's last part)
    other than in a comparison: the shape of a command line or a `which` lookup."""
    tree = ast.parse(source)
    compared = {
        id(node)
        for cmp in ast.walk(tree)
        if isinstance(cmp, ast.Compare)
        for node in (cmp.left, *cmp.comparators)
    }
    names = (
        node.value.strip().rsplit("/", 1)[-1]
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in compared
    )
    return [name for name in names if name in PROGRAMS]


def test_the_detector_finds_the_harness() -> None:
    """What the wheel is checked with finds each program where tests/support starts it."""
    found: set[str] = set()
    for path in (REPO / "tests" / "support").glob("*.py"):
        found.update(programs_started(path.read_text()))
    assert found == PROGRAMS
    assert programs_started('"podman" in name.lower()') == []
    assert programs_started('HINT = "is dockerd running?"') == []


def test_the_wheel_starts_no_engine_sshd_or_nsenter(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        modules = {name: z.read(name).decode() for name in z.namelist() if name.endswith(".py")}
    assert "dockerfs_fuse/lifecycle/cli.py" in modules  # the product is there, and read
    harness = [
        name
        for name in modules
        if Path(name).stem.startswith(("private_", "demo")) or Path(name).stem == "mount_process"
    ]
    assert harness == []
    offending = {name: found for name, text in modules.items() if (found := programs_started(text))}
    assert offending == {}


def test_pip_install_brings_the_man_pages(wheel: Path, tmp_path: Path) -> None:
    """`pip install` into a fresh venv puts both pages where man looks beside its bin/."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    res = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr
    man1 = venv / "share" / "man" / "man1"
    for page in MAN_PAGES:
        assert (man1 / page).read_text() == (REPO / "docs" / "man" / page).read_text()
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "-l", str(man1 / "dockerfs-fuse.1")],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80", "LC_ALL": "C.UTF-8"},
            timeout=60,
        )
        assert shown.returncode == 0 and "SYNOPSIS" in shown.stdout, shown.stderr
