"""Open files and directories: the handle each open gets, and the table of them.

Every kind of open file is a `Handle` that knows how to read, write and
release itself; the dispatcher finds it by number and hands the request on.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Hashable

import pyfuse3

from dockerfs_fuse.fuse.errors import fail, refusal_reason
from dockerfs_fuse.fuse.kernel_cache import noflush
from dockerfs_fuse.model.ctl import BadCommand, Refusals
from dockerfs_fuse.model.inodes import Changes, Node

# Once `flush` is implemented (for writes under root/), the kernel sends a
# FLUSH on every close(2) of every file and waits for its answer: a `grep -r`
# of many small files pays one more round trip per file. An open whose
# `flush` does nothing tells the kernel to skip it, where pyfuse3 can say so.
NOFLUSH = noflush()


def file_info(
    fh: pyfuse3.FileHandleT,
    *,
    direct_io: bool = False,
    keep_cache: bool = True,
    nonseekable: bool = False,
    flush: bool = False,
) -> pyfuse3.FileInfo:
    """What every `open` and `create` answers. `flush`: the open's handle has
    work to do when a descriptor of it is closed (`Handle.flush`), so the
    kernel must send FLUSH; every other open asks it not to (NOFLUSH)."""
    info = pyfuse3.FileInfo(
        fh=fh, direct_io=direct_io, keep_cache=keep_cache, nonseekable=nonseekable
    )
    if NOFLUSH and not flush:
        info.noflush = True
    return info


class Handle:
    """An open file. By default neither readable nor writable (EBADF)."""

    async def read(self, off: int, size: int) -> bytes:
        raise fail(errno.EBADF)

    async def write(self, off: int, buf: bytes) -> int:
        raise fail(errno.EBADF)

    async def flush(self) -> None:
        """A descriptor of this open was closed: nothing to do but for a file
        being written. An open whose handle does work here says so to
        `file_info` (flush=True), or the kernel never calls it."""

    async def fsync(self) -> None:
        """fsync(2): nothing to do but for a file being written."""

    def release(self) -> None:
        """The last descriptor of this open was closed."""

    async def released(self) -> None:
        """After release: what may wait (the close itself has returned)."""


class CommandHandle(Handle):
    """An open `ctl`: each write is one whole command (`run`). A refused one
    tells its writer an errno, and the object's `err` (`refusals`, under
    `key`) says why."""

    def __init__(self, refusals: Refusals, key: Hashable) -> None:
        self.refusals = refusals
        self.key = key

    async def run(self, command: bytes) -> None:
        raise NotImplementedError

    async def write(self, off: int, buf: bytes) -> int:
        try:
            if off != 0:
                # The rest of a write the kernel split, or a second write on one
                # descriptor: never a whole command, so never run.
                raise BadCommand(f"one command per open and write, at offset 0 (not {off})")
            await self.run(buf)
            return len(buf)
        except Exception as exc:
            self.refusals.note(self.key, buf, refusal_reason(exc))
            raise


class HandleTable:
    def __init__(self) -> None:
        self._handles: dict[int, Handle] = {}
        self._next_fh = 1

    def add(self, handle: Handle) -> pyfuse3.FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return pyfuse3.FileHandleT(fh)

    def get(self, fh: int) -> Handle | None:
        return self._handles.get(fh)

    def pop(self, fh: int) -> Handle | None:
        return self._handles.pop(fh, None)


class SnapshotHandle(Handle):
    """File contents frozen at open: every read of one open sees one version.

    With kernel caching `node` is the file, whose data may since have moved on.
    """

    def __init__(
        self,
        data: bytes,
        node: Node | None = None,
        on_changes: Callable[[Changes], None] | None = None,
    ) -> None:
        self.data = data
        self.node = node
        self._on_changes = on_changes

    async def read(self, off: int, size: int) -> bytes:
        node = self.node
        if node is not None and self.data is not node.data and self._on_changes is not None:
            # An open from before a change reads its own version, and the
            # kernel keeps the pages this read fills for every later open:
            # drop them again. The invalidator runs after this reply is sent.
            self._on_changes(Changes(changed=[node.inode]))
        return self.data[off : off + size]
