"""The requests that would change the tree: every one refused, EACCES outside a
container's root/, and under it EROFS for an engine that cannot write (here,
one that is no Docker client; no mount needed: the handlers are called).
What a real engine's root/ does with them: test_root_writes.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
import trio

from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.operations import DockerFS
from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.model.inodes import ROOT_INODE


class Idle:
    """An engine that is never asked anything here."""

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}

    def stream_logs(self, *args: object) -> None:
        raise AssertionError("asked for logs")

    def stream_archive(self, *args: object) -> None:
        raise AssertionError("asked for files")


class Context:
    pid = os.getpid()
    uid = os.getuid()
    gid = os.getgid()
    umask = 0o022


Attempt = Callable[[DockerFS, int], Awaitable[object]]
ctx: Any = Context()
ATTEMPTS: dict[str, Attempt] = {
    "create": lambda fs, i: fs.create(i, b"x", 0o644, os.O_WRONLY, ctx),
    "mknod": lambda fs, i: fs.mknod(i, b"x", 0o644, 0, ctx),
    "mkdir": lambda fs, i: fs.mkdir(i, b"x", 0o755, ctx),
    "symlink": lambda fs, i: fs.symlink(i, b"x", b"y", ctx),
    "link": lambda fs, i: fs.link(ROOT_INODE, i, b"x", ctx),
    "unlink": lambda fs, i: fs.unlink(i, b"x", ctx),
    "rmdir": lambda fs, i: fs.rmdir(i, b"x", ctx),
    "rename": lambda fs, i: fs.rename(ROOT_INODE, b"x", i, b"y", 0, ctx),
    "setxattr": lambda fs, i: fs.setxattr(i, b"user.x", b"1", ctx),
    "removexattr": lambda fs, i: fs.removexattr(i, b"user.x", ctx),
}


@pytest.mark.parametrize("name", sorted(ATTEMPTS))
def test_each_change_is_refused(name: str) -> None:
    invalidator = Invalidator()
    engines = Engines({"local": Idle()}, invalidator.apply)  # type: ignore[dict-item]
    fs = DockerFS(engines, invalidator)
    container = {"Id": "c" * 64, "Names": ["/c1"], "State": "running", "Created": 1}
    fs.table.set_containers([container], fs.table.root)
    cdir = fs.table.lookup(fs.table.root, "c" * 64)
    live = fs.table.lookup(cdir, LIVE) if cdir is not None else None
    root = fs.table.lookup(live, "root") if live is not None else None
    assert root is not None

    async def errno_of(inode: int) -> int:
        with pytest.raises(pyfuse3.FUSEError) as err:
            await ATTEMPTS[name](fs, inode)
        return err.value.errno

    assert trio.run(errno_of, ROOT_INODE) == errno.EACCES
    under_root = errno.ENOTSUP if "xattr" in name else errno.EROFS
    assert trio.run(errno_of, root.inode) == under_root
