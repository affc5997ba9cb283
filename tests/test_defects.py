"""Defects a new user tripped over (issue 14), each against a real engine and mount.

Long label keys, ID prefixes shared with stopped containers, oversized ctl
writes, containers removed under readers, state conflicts, and the tree after
Docker comes back.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"


def eventually(check: Callable[[], bool], within: float = 15.0) -> float:
    """Poll check until true; return how long it took; fail after `within`."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not true within {within}s")
        time.sleep(0.05)
    return time.monotonic() - t0


def state(engine: Engine, cid: str) -> dict[str, Any]:
    result: dict[str, Any] = engine.api(f"/containers/{cid}/json")["State"]
    return result


def ctl(m: Mount, name: str, command: str) -> None:
    """One open, one write(2), as `echo command > ctl` does."""
    fd = os.open(m.path / name / "ctl", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def ctl_errno(m: Mount, name: str, command: str) -> int:
    with pytest.raises(OSError) as err:
        ctl(m, name, command)
    return err.value.errno or 0


@pytest.fixture
def all_mounted(engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(engine.host, "--all", name="all")
    return m


# -- 3. names longer than 255 bytes ------------------------------------------------------


def file_name(key: str) -> str:
    """The README's mapping, written out independently of tree.py."""
    name = key.replace("%", "%25").replace("/", "%2F")
    if len(name.encode()) <= 255:
        return name
    return name[:200] + "%~" + hashlib.sha256(key.encode()).hexdigest()[:12]  # ASCII keys here


def test_long_label_keys_are_valid_names_and_the_directory_lists(
    engine: Engine, mounted: Mount, tmp_path: Path
) -> None:
    labels = {"plain": "p", "a/b": "slash", "100%": "pct"}
    for size in (255, 256, 1000, 4000):
        labels["k" * (size - 5) + f"{size:05d}"] = f"value {size}"
    labels["k" * 995 + "other"] = "shares 200 bytes with the 1000-byte key"
    args = [arg for k, v in labels.items() for arg in ("-l", f"{k}={v}")]
    cid = engine.run(*args, IMG, "sleep", "1d")
    assert engine.api(f"/containers/{cid}/json")["Config"]["Labels"] == labels
    d = mounted.path / cid / "Labels"
    want = {file_name(k): f"{v}\n".encode() for k, v in labels.items()}
    assert len(want) == len(labels)  # no two keys share a name

    ls = subprocess.run(["ls", "-1", str(d)], capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    assert sorted(ls.stdout.splitlines()) == sorted(want)
    assert all(len(n.encode()) <= 255 for n in os.listdir(d))
    find = subprocess.run(["find", str(mounted.path / cid)], capture_output=True, text=True)
    assert find.returncode == 0, find.stderr
    assert {Path(p).name for p in find.stdout.splitlines() if "/Labels/" in p} == set(want)
    for name, content in want.items():
        assert (d / name).read_bytes() == content
    copy = tmp_path / "labels-copy"
    cp = subprocess.run(["cp", "-r", str(d), str(copy)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == want
    root = subprocess.run(["ls", str(mounted.path)], capture_output=True, text=True)
    assert root.returncode == 0 and cid in root.stdout.split()
