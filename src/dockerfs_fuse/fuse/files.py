"""A container's root/: its own files, read-only, through the engine's archive
snapshots (engine/roots.py writes what they say into the inode table).

Slow steps answer EINTR once their reader has a fatal signal pending
(interrupts.py). With kernel caching readdir comes with no process, so the
directory's last asker stands in for it (`note_asker`).
"""

from __future__ import annotations

import errno
import os

import pyfuse3

from dockerfs_fuse.engine.roots import ContainerRoots, Listing, RootFile, in_root
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import interruptible
from dockerfs_fuse.model.containers import NAME_MAX
from dockerfs_fuse.model.inodes import Node

# A root/ file at least this large may be read through the page cache (see open).
ROOT_PAGED_MIN = 1 << 20
# Directories under root/ whose last asker is remembered (note_asker); beyond,
# all are forgotten at once, and such a listing waits on with no signal to end it.
ROOT_ASKERS_KEPT = 4096


class RootFileHandle(Handle):
    """An open file under a container's root/: its content, streamed or spooled."""

    def __init__(self, file: RootFile, opener_pid: int) -> None:
        self.file = file
        self.opener_pid = opener_pid

    async def read(self, off: int, size: int) -> bytes:
        if self.file.available(off, size):
            return await self.file.read(off, size)
        return await interruptible(self.opener_pid, self.file.read, off, size)

    def release(self) -> None:
        self.file.close()


class RootView:
    def __init__(self, roots: ContainerRoots, handles: HandleTable, kernel_cache: bool) -> None:
        self.roots = roots
        self.handles = handles
        self.kernel_cache = kernel_cache
        self._askers: dict[int, int] = {}
        roots.table.fold_listeners.append(self._let_go)

    def _let_go(self, node: Node) -> None:
        """The table lets go of a container the kernel forgot (model/inodes.py),
        its root/ with it: so do we. Kept, its number would keep the memory
        of the whole walk in use."""
        self._askers.pop(node.inode, None)

    async def lookup(self, parent: Node, name: str) -> Node | None:
        if len(os.fsencode(name)) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)  # no container file has such a name
        return await self.roots.lookup(parent, name)

    def note_asker(self, node: Node, pid: int) -> None:
        """With kernel caching readdir comes with no process; a directory under
        root/ is read by the one that last looked it up or stat'ed it (the
        kernel stats a directory before reading it from the start), so that
        its signal can end a long wait."""
        if self.kernel_cache and node.is_dir and in_root(node):
            if len(self._askers) > ROOT_ASKERS_KEPT:
                self._askers.clear()
            self._askers[node.inode] = pid

    async def listing(self, node: Node, pid: int | None) -> Listing:
        """Opening a directory under root/ re-reads it. `pid` is the opener's,
        so that a signal ends a long wait with EINTR; None for readdir with
        kernel caching, which asks `note_asker`'s last asker."""
        entries = self.roots.listing_now(node)  # a walk goes on: no request, no wait
        if entries is not None:
            return entries
        if pid is None:
            pid = self._askers.get(node.inode)
        if pid is None:
            return await self.roots.listing(node)
        return await interruptible(pid, self.roots.listing, node)

    async def open(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        file = self.roots.open_now(node)
        if file is None:
            file = await interruptible(pid, self.roots.open, node)
        fh = self.handles.add(RootFileHandle(file, pid))
        # Never pages cached before this open (keep_cache off). A large file
        # whose size is the one the kernel was told goes through the page
        # cache, so the kernel reads ahead in large pieces (tar asks 10 KiB at
        # a time); any other with direct I/O, never clipped at a stale size.
        told = node.entry.size if node.entry is not None else -1
        paged = file.size == told and told >= ROOT_PAGED_MIN
        return file_info(fh, direct_io=not paged, keep_cache=False)
