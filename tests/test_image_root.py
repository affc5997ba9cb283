"""An image's root/ (`--view=engine`: images/<id>/root) on a real mount over
the private dockerd: what `docker export` of a container made from the image
shows, read through a helper container that is labelled as ours, made once
while in use, removed when idle and at unmount, and removed at the next
mount when a killed daemon left it behind."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, stop_mount
from support.fs_trees import compare, exported, mounted_tree
from support.private_dockerd import IMAGE
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

HELPER_LABEL = "dockerfs.helper"
# The daemon removes a helper nobody held for this long (engine/helpers.py).
IDLE = 10.0
# What Docker adds to each container it creates, with that moment's mtime.
INIT_LAYER = frozenset(
    {
        "/.dockerenv",
        "/dev",
        "/dev/console",
        "/dev/pts",
        "/dev/shm",
        "/etc",
        "/etc/hostname",
        "/etc/hosts",
        "/etc/mtab",
        "/etc/resolv.conf",
        "/proc",
        "/sys",
    }
)
# A bound on the wait for that removal; it does not time it.
IDLE_BOUND = 60.0


def image_id(engine: Engine) -> str:
    return str(engine.api(f"/images/{IMAGE}/json")["Id"]).removeprefix("sha256:")


def helpers(engine: Engine) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = engine.api(
        '/containers/json?all=1&filters={"label":["' + HELPER_LABEL + '"]}'
    )
    return found


def image_root(m: Mount, engine: Engine) -> Path:
    return m.path / "images" / image_id(engine) / "root"


def test_root_is_a_link_into_the_unlisted_live_directory(engine: Engine, view: Mount) -> None:
    d = view.path / "images" / image_id(engine)
    names = os.listdir(d)
    assert "root" in names and ".live" not in names
    assert os.readlink(d / "root") == ".live/root"
    assert os.listdir(d / ".live") == []
    # Listing an image makes no helper: only entering its root/ does.
    assert helpers(engine) == []


def test_root_shows_what_docker_export_of_the_image_shows(engine: Engine, view: Mount) -> None:
    got = mounted_tree(image_root(view, engine))
    (helper,) = helpers(engine)
    assert helper["Labels"][HELPER_LABEL] == "image-root"
    assert helper["State"] == "created"  # never started
    made = engine.docker("create", IMAGE, "true").strip()
    try:
        want = exported(engine.dockerd, made)
    finally:
        engine.docker("rm", made)
    # Each container's init layer (its placeholders) is made when it is
    # created: the same paths, kinds and modes, each its own mtime.
    compare(got, want, lambda path: path in INIT_LAYER)
    compare(got, want, lambda path: path not in INIT_LAYER, mtime_slack=3600)
    assert got["/bin/sh"][0] == "link"
    # Reading it again reuses the helper while it serves.
    assert (image_root(view, engine) / "bin").is_dir()
    assert [h["Id"] for h in helpers(engine)] == [helper["Id"]]
    # Read-only, as a container's root/.
    with pytest.raises(OSError) as err:
        (image_root(view, engine) / "new").write_text("x")
    assert err.value.errno == 30  # EROFS


def test_a_helper_goes_when_idle_and_an_open_file_holds_it(engine: Engine, view: Mount) -> None:
    with open(image_root(view, engine) / "bin" / "busybox", "rb") as f:
        assert f.read(4) == b"\x7fELF"
        (held,) = helpers(engine)
        # An open file holds it: past the idle bound (and a sweep), it is still there.
        time.sleep(IDLE + IDLE / 2)
        assert [h["Id"] for h in helpers(engine)] == [held["Id"]]
    wait_until(lambda: helpers(engine) == [], "the idle helper removed", timeout=IDLE_BOUND)
    assert held["Id"] not in {c["Id"] for c in engine.containers(all=True)}
    # The next read makes a new one.
    assert (image_root(view, engine) / "bin").is_dir()
    assert len(helpers(engine)) == 1


def test_unmount_removes_the_helpers(engine: Engine, view: Mount) -> None:
    assert (image_root(view, engine) / "etc").is_dir()
    assert len(helpers(engine)) == 1
    # `fusermount -u`: the daemon removes its helpers, then exits by itself.
    view.unmount()
    assert view.wait_exit() == 0
    assert helpers(engine) == []


def test_a_killed_daemons_helper_is_removed_at_the_next_mount(
    engine: Engine, mount_factory: Any
) -> None:
    first: Mount = mount_factory(engine.host, "--view=engine", name="first")
    assert (image_root(first, engine) / "etc").is_dir()
    (left,) = helpers(engine)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    stop_mount(first)
    assert [h["Id"] for h in helpers(engine)] == [left["Id"]]  # left behind
    second: Mount = mount_factory(engine.host, "--view=engine", name="second")
    wait_until(lambda: helpers(engine) == [], "the left helper removed")
    assert "removing helper container" in second.log_text()
