"""Open files and directories: the handle each open gets, and the table of them.

Every kind of open file is a `Handle` that knows how to read, write and
release itself; the dispatcher finds it by number and hands the request on.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import pyfuse3

from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.model.inodes import Changes, Node


class Handle:
    """An open file. By default neither readable nor writable (EBADF)."""

    async def read(self, off: int, size: int) -> bytes:
        raise fail(errno.EBADF)

    async def write(self, off: int, buf: bytes) -> int:
        raise fail(errno.EBADF)

    def release(self) -> None:
        """The last descriptor of this open was closed."""


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
