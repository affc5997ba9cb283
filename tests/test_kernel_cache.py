"""Kernel caching (patches/pyfuse3): which path runs, and what stays fresh when the kernel caches.

`make test` runs the mount tests twice: on the kernel-cached path (the patched
pyfuse3 that `make` builds) and with DOCKERFS_STOCK_PYFUSE3=1, as on stock
pyfuse3. The tests here hold on both paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import secrets
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import IN_CI, Engine, Mount, require
from support.waiting import wait_until

from dockerfs_fuse.fuse import kernel_cache
from dockerfs_fuse.model.inodes import InodeTable

IMG = "busybox:latest"
RECORDED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "containers-all.json").read_text()
)


class _StockFileInfo:
    pass


class _PatchedFileInfo:
    cache_readdir = False
    noflush = False


def _module(file_info: type, pass_inode: bool) -> Any:
    ops = type("Operations", (), {"pass_inode": False} if pass_inode else {})
    return SimpleNamespace(FileInfo=file_info, Operations=ops, __version__="3.5.0")


PATCHED = _module(_PatchedFileInfo, True)
STOCK = _module(_StockFileInfo, False)


def test_detection() -> None:
    assert kernel_cache.detect({}, PATCHED, "6.18.44-fc").enabled
    assert kernel_cache.detect({kernel_cache.STOCK_ENV: "0"}, PATCHED, "5.1.0").enabled
    off = kernel_cache.detect({kernel_cache.STOCK_ENV: "1"}, PATCHED, "6.1.0")
    assert not off.enabled and kernel_cache.STOCK_ENV in off.why
    off = kernel_cache.detect({}, STOCK, "6.1.0")
    assert not off.enabled and "stock" in off.why
    assert not kernel_cache.detect({}, _module(_PatchedFileInfo, False), "6.1.0").enabled
    off = kernel_cache.detect({}, PATCHED, "4.19.0-27-amd64")
    assert not off.enabled and "4.19.0" in off.why


def test_noflush_detection() -> None:
    assert kernel_cache.noflush({}, PATCHED)
    assert kernel_cache.noflush({kernel_cache.STOCK_ENV: "0"}, PATCHED)
    assert not kernel_cache.noflush({kernel_cache.STOCK_ENV: "1"}, PATCHED)
    assert not kernel_cache.noflush({}, STOCK)


def test_make_built_the_patched_pyfuse3() -> None:
    # Outside CI a hand-made venv may hold the stock release; `make` builds the patched one.
    require(kernel_cache.patched(), "pyfuse3 is the stock release: run `make deps`")
    assert kernel_cache.patched()
    assert kernel_cache.noflush({})  # patches/pyfuse3/0003: FileInfo.noflush


def test_listing_and_same_length_changes_are_reported() -> None:
    """What the kernel caches (pages, listings) must be invalidated on any change."""
    t = InodeTable()
    c = copy.deepcopy(RECORDED[0])
    c["Labels"] = {"a": "1"}
    c["State"] = "running"
    t.set_containers([c])
    cid = c["Id"]
    container = t.lookup(t.root, cid)
    assert container is not None
    labels, state = t.lookup(container, "Labels"), t.lookup(container, "State")
    assert labels is not None and state is not None
    for node in (container, labels, state):
        t.remember(node)
    changed = copy.deepcopy(c)
    changed["State"] = "created"  # as long as "running"
    changed["Labels"] = {"a": "1", "b": "2"}
    changes = t.set_containers([changed])
    assert state.inode in changes.changed
    assert labels.inode in changes.changed
    assert container.inode not in changes.changed  # its own entries did not change


@pytest.mark.docker
@pytest.mark.fuse
def test_mount_runs_the_path_it_detects(mounted: Mount) -> None:
    expected = kernel_cache.detect().enabled
    assert mounted.stats()["kernel_cache"] is expected
    if IN_CI and kernel_cache.patched() and not os.environ.get(kernel_cache.STOCK_ENV):
        assert expected, kernel_cache.detect().why


@pytest.mark.docker
@pytest.mark.fuse
def test_the_fuse_fd_is_non_blocking_exactly_with_the_patched_pyfuse3(mounted: Mount) -> None:
    """patches/pyfuse3/0002 makes the fd non-blocking, so that pyfuse3's loop can
    take queued requests without waiting in trio first; the stock release keeps
    it blocking (it always waits). Both patches are applied or neither is."""
    pid = mounted.proc.pid
    flags = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse":
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                flags.append(int(info.split("flags:")[1].split()[0], 8))
    assert flags, "no /dev/fuse among the daemon's descriptors"
    assert [bool(f & os.O_NONBLOCK) for f in flags] == [kernel_cache.patched()] * len(flags)


@pytest.mark.docker
@pytest.mark.fuse
def test_every_listing_of_the_root_asks_docker_once(engine: Engine, mounted: Mount) -> None:
    def lists() -> int:
        return int(mounted.stats()["requests"].get("containers/json", 0))

    wait_until(lambda: lists() >= 1, "the daemon's own first listing")
    for _ in range(3):
        cid = engine.run(IMG, "sleep", "1d")
        before = lists()
        assert cid in os.listdir(mounted.path)  # current, not a cached listing
        assert lists() == before + 1
        assert os.stat(mounted.path).st_nlink == 2 + len(os.listdir(mounted.path))


@pytest.mark.docker
@pytest.mark.fuse
def test_a_same_length_change_replaces_cached_pages(engine: Engine, mounted: Mount) -> None:
    old, new = f"aa{secrets.token_hex(4)}", f"bb{secrets.token_hex(4)}"
    cid = engine.run(f"--name={old}", IMG, "sleep", "1d")
    name = mounted.path / cid / "Names" / "0"
    for _ in range(2):  # the second read comes from the kernel's page cache
        assert name.read_text() == f"/{old}\n"
    engine.docker("rename", old, new)
    wait_until(lambda: name.read_text() == f"/{new}\n", "Names/0 reads the new name")
    assert name.stat().st_size == len(f"/{new}\n")


@pytest.mark.docker
@pytest.mark.fuse
def test_a_read_through_an_older_open_leaves_no_stale_pages(engine: Engine, mounted: Mount) -> None:
    """An open made before a change still reads its own version; the kernel
    must not keep that version's pages for the opens made after the change."""
    cid = engine.run(IMG, "sleep", "1d")
    state = mounted.path / cid / "State"
    assert state.read_text() == "running\n"
    fd = os.open(state, os.O_RDONLY)
    try:
        engine.docker("pause", cid)
        # The change is invalidated (attributes included): stat sees it, and
        # reads no page, so the older open's next read goes to the daemon.
        wait_until(lambda: state.stat().st_size == len("paused\n"), "State's size says paused")
        assert os.pread(fd, 4096, 0).startswith(b"run")  # one version per open
    finally:
        os.close(fd)
    wait_until(lambda: state.read_text() == "paused\n", "State reads paused")
