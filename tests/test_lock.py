"""requirements.lock against pyproject.toml and the venv that make built from it.

What checks a refreshed lock (scripts/lock): every range pyproject gives is met by
one pin with hashes, and the venv holds exactly the pinned versions, so what CI
tested is what the lock says.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements.lock"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")
# Pinned elsewhere: scripts/build-pyfuse3 builds one version from a hashed sdist.
BUILT_APART = {"pyfuse3"}


def pins() -> dict[str, tuple[str, Marker | None, int]]:
    """name -> (version, marker, number of hashes)."""
    found: dict[str, tuple[str, Marker | None, int]] = {}
    name = ""
    for line in LOCK.read_text().splitlines():
        m = PIN.match(line)
        if m:
            name = canonicalize_name(m[1])
            found[name] = (m[2], Marker(m[3]) if m[3] else None, 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, marker, hashes = found[name]
            found[name] = (version, marker, hashes + 1)
    return found


def pyproject_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    return [Requirement(r) for r in wanted]


def build_pyfuse3_version() -> str:
    m = re.search(r"^VERSION=(\S+)$", (REPO / "scripts/build-pyfuse3").read_text(), re.M)
    assert m, "scripts/build-pyfuse3 names no VERSION"
    return m[1]


def test_every_pin_has_hashes() -> None:
    found = pins()
    assert len(found) > 20, "requirements.lock parsed to almost nothing"
    assert [name for name, (_, _, hashes) in found.items() if hashes == 0] == []


@pytest.mark.parametrize("req", pyproject_requirements(), ids=str)
def test_pyproject_ranges_are_met_by_the_lock(req: Requirement) -> None:
    name = canonicalize_name(req.name)
    if name in BUILT_APART:
        assert name not in pins()
        assert req.specifier.contains(build_pyfuse3_version())
        return
    assert name in pins(), f"{req.name} is not in requirements.lock: run scripts/lock"
    version = pins()[name][0]
    assert req.specifier.contains(version), f"{req} but the lock pins {version}"


def test_the_venv_holds_exactly_the_locked_versions() -> None:
    installed: dict[str, str] = {
        canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    wrong = {}
    for name, (version, marker, _) in pins().items():
        if marker is not None and not marker.evaluate():
            continue
        if installed.get(name) != version:
            wrong[name] = (installed.get(name), version)
    assert wrong == {}, "installed vs locked (make deps installs from requirements.lock)"
    extra = set(installed) - set(pins()) - BUILT_APART - {"dockerfs-fuse"}
    assert extra == set(), "installed but not locked"
