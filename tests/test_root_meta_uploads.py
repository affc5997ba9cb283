"""chmod, chown and utime under a stopped container's root/, where no tool can
run: the path's entry uploaded again (a directory's member, a file's whole
content), checked with `docker cp` from the container; a symlink's, EPERM."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Engine, Mount
from support.fs_trees import docker_copied
from support.private_dockerd import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.fuse]


def test_a_stopped_containers_modes_owners_and_times(engine: Engine, mount_factory: Any) -> None:
    cid = engine.run(IMAGE, "sleep", "1d")
    m: Mount = mount_factory(engine.host, "-a")
    tmp = m.path / cid / "root" / "tmp"
    os.mkdir(tmp / "d")
    (tmp / "d" / "f").write_bytes(b"content\n")
    os.symlink("f", tmp / "d" / "l")
    before = docker_copied(engine.dockerd, cid, "/tmp/d")
    engine.docker("stop", "-t", "0", cid)
    os.chmod(tmp / "d", 0o700)
    os.utime(tmp / "d", (1_500_000_000, 1_500_000_000))
    # A file's or a link's by path: EPERM (uploading the file again would
    # replace it in place, its xattrs and hard links lost); nothing changes.
    f, link = tmp / "d" / "f", tmp / "d" / "l"
    changes: list[Callable[[], None]] = [
        lambda: os.chown(f, 7, 8),
        lambda: os.chmod(f, 0o600),
        lambda: os.utime(f, (1, 1)),
        lambda: os.chown(link, 7, 8, follow_symlinks=False),
    ]
    for change in changes:
        with pytest.raises(OSError) as err:
            change()
        assert err.value.errno == errno.EPERM
    tree = docker_copied(engine.dockerd, cid, "/tmp/d")
    assert tree["/d"][1] == 0o700 and tree["/d"][5] == 1_500_000_000
    assert tree["/d/f"] == before["/d/f"]
    assert (tmp / "d" / "f").read_bytes() == b"content\n"
    st = os.stat(tmp / "d")
    assert (st.st_mode & 0o7777, int(st.st_mtime)) == (0o700, 1_500_000_000)
    # Through a descriptor open for writing, a file's mode goes with its content.
    with open(tmp / "d" / "f", "r+b") as opened:
        os.fchmod(opened.fileno(), 0o600)
    assert docker_copied(engine.dockerd, cid, "/tmp/d/f")["/f"][1] == 0o600
