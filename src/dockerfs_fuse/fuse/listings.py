"""Directory listings and their readdir cursors.

Without kernel caching an open directory gets a handle holding its listing
as it was at opendir, so offsets stay meaningful. With it (the pyfuse3
patch) the kernel opens no directory and keeps what we list; each listing is
a numbered snapshot instead (`list_for_kernel`).
"""

from __future__ import annotations

import collections
import logging
import os
import time

import pyfuse3

from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.roots import Listing, in_root
from dockerfs_fuse.fuse.attrs import Attributes
from dockerfs_fuse.fuse.files import RootView
from dockerfs_fuse.fuse.handles import Handle
from dockerfs_fuse.fuse.invalidate import Invalidator, invalidate_inodes
from dockerfs_fuse.fuse.memory import give_back
from dockerfs_fuse.model.containers import NAME_MAX
from dockerfs_fuse.model.inodes import NS, Node

log = logging.getLogger(__name__)

# readdir offsets start above 2: NFS re-exports treat 1 and 2 specially.
_OFFSET_BASE = 3
# A listing of at least this many entries gives the memory of its answer
# back to the system once applied (memory.give_back).
LISTED_PER_GIVE_BACK = 1000
# ... at most once in this many seconds: a trim costs 5-12 ms of the trio
# thread at 10,000 containers, and a `watch ls` or concurrent `ls`es would
# pay it each time for nothing new to give.
GIVE_BACK_EVERY = 1.0
# Kernel caching: a listing's offsets carry its snapshot number above this bit,
# in 31 bits, so that an offset stays a positive signed 64-bit off_t.
_SNAPSHOT_SHIFT = 32
_SNAPSHOT_MASK = (1 << 31) - 1
_SNAPSHOTS_KEPT = 256


class DirHandle(Handle):
    """A directory listing frozen at opendir, so offsets stay meaningful."""

    def __init__(self, entries: Listing) -> None:
        self.entries = entries


class Listings:
    def __init__(
        self, engines: Engines, attrs: Attributes, roots: RootView, invalidator: Invalidator
    ) -> None:
        self.engines = engines
        self.table = engines.table
        self.attrs = attrs
        self.roots = roots
        self.invalidator = invalidator
        self._snapshots: dict[tuple[int, int], Listing] = {}
        self._snapshot_dirs: collections.Counter[int] = collections.Counter()  # snapshots per dir
        self.table.fold_listeners.append(self._let_go)
        self._given_back = -GIVE_BACK_EVERY  # time.monotonic() of the last give_back

    def _let_go(self, node: Node) -> None:
        """The table lets go of a container the kernel forgot (model/inodes.py):
        its directories' snapshots go too. Kept, the numbers they hold would
        keep the memory of the whole walk in use."""
        if node.inode in self._snapshot_dirs:
            del self._snapshot_dirs[node.inode]
            for key in [key for key in self._snapshots if key[0] == node.inode]:
                del self._snapshots[key]

    async def _refresh(self, inode: int) -> bool:
        """Ask the engine behind a directory, if any (Engines.refresh_listing);
        whether one was asked; what it changed is then pushed to the kernel."""
        if not await self.engines.refresh_listing(inode):
            return False
        node = self.table.get(inode) if inode in self.table else None
        if (
            node is not None
            and len(node.children or ()) >= LISTED_PER_GIVE_BACK
            and time.monotonic() - self._given_back >= GIVE_BACK_EVERY
        ):
            # The answer's objects are freed now; what the C library held
            # for its larger ones goes back to the system (a few ms).
            self._given_back = time.monotonic()
            give_back()
        await self.invalidator.told_kernel()
        return True

    async def open(self, node: Node, pid: int) -> DirHandle:
        """opendir without kernel caching: the listing, read now."""
        if in_root(node):
            return DirHandle(await self.roots.listing(node, pid))
        await self._refresh(node.inode)
        return DirHandle(self._as_listed(node))

    def _as_listed(self, node: Node) -> Listing:
        return [(name, child.inode) for name, child in self.table.listed(node)]

    def reply(self, handle: DirHandle, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """readdir on an open directory: its entries from `start_id` on."""
        start = max(0, start_id - _OFFSET_BASE + 1) if start_id else 0
        for index in range(start, len(handle.entries)):
            name, inode = handle.entries[index]
            if inode not in self.table:
                continue  # vanished since opendir and already forgotten
            node = self.table.get(inode)
            if node.gone:
                continue
            try:
                encoded = os.fsencode(name)
                if len(encoded) > NAME_MAX:
                    raise ValueError(f"name of {len(encoded)} bytes")
                attrs = self.attrs.of(node)
            except Exception as exc:
                # One bad entry must not make its directory unlistable (the
                # tree never makes such a name; this is the last line).
                log.error("readdir: left out %r: %s", name[:80], exc)
                continue
            if not pyfuse3.readdir_reply(token, encoded, attrs, index + _OFFSET_BASE):
                return
            self.table.remember(node)

    async def list_for_kernel(self, node: Node, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """readdir with kernel caching: no directory handles, the kernel keeps what we list.

        A listing is a snapshot of the directory's entries, numbered by their
        hash: the number rides in the upper bits of every offset, so the later
        pages of one listing are served from the same snapshot without a
        handle, and an unchanged directory always gets the same offsets.
        Reading an engine's top directory (the root with one engine) from its
        start still asks the engine (the contract); its mtime then moves on
        and its cached attributes are dropped, so the kernel's auto_inval_data
        drops the cached listing at the next read: every `ls` asks once.
        """
        inode = node.inode
        if start_id == 0:
            entries = await self._list_from_start(node)
            snapshot = hash(tuple(entries)) & _SNAPSHOT_MASK
            kept = self._snapshots.pop((inode, snapshot), None)
            if kept is None:
                self._snapshot_dirs[inode] += 1
            elif kept == entries:
                # The same listing again (a walk of an unchanged tree): keep the
                # one held, rather than a copy of it made now, wherever it lands.
                entries = kept
            self._snapshots[inode, snapshot] = entries
            if len(self._snapshots) > _SNAPSHOTS_KEPT:
                oldest = next(iter(self._snapshots))
                del self._snapshots[oldest]
                self._snapshot_dirs[oldest[0]] -= 1
                if not self._snapshot_dirs[oldest[0]]:
                    del self._snapshot_dirs[oldest[0]]
            start = 0
        else:
            snapshot, pos = divmod(start_id, 1 << _SNAPSHOT_SHIFT)
            start = pos - _OFFSET_BASE + 1
            found = self._snapshots.get((inode, snapshot))
            if found is None:  # long forgotten: the directory as it is now
                found = self._as_listed(node)
            entries = found
        base = snapshot << _SNAPSHOT_SHIFT
        for index in range(start, len(entries)):
            name, child_inode = entries[index]
            child = self.table.get(child_inode) if child_inode in self.table else None
            if child is None or child.gone:
                continue  # vanished since the listing began
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self.attrs.of(child), base + index + _OFFSET_BASE
            ):
                return
            self.table.remember(child)

    async def _list_from_start(self, node: Node) -> Listing:
        """A listing from its start: the engine asked where the contract says,
        and the directory's mtime moved on so the kernel asks again next time."""
        inode = node.inode
        if self.engines.lists_on_read(inode):
            await self._refresh(inode)
            node.mtime_ns = max(time.time_ns(), node.mtime_ns + 1)
            # Here, not in a worker thread: a thread hop is slower than this
            # write to /dev/fuse, which waits for nothing of ours (no
            # writeback cache), and it must be done before we reply.
            invalidate_inodes([inode], False)
        if not in_root(node):
            return self._as_listed(node)
        # The kernel opens no directory here, so every listing it asks for is
        # an open: read it again, and move the directory's mtime on (below
        # the second: tar keeps whole seconds) so the kernel asks again at
        # the next open instead of using what it cached.
        entries = await self.roots.listing(node, None)
        node.mtime_ns = node.mtime_ns // NS * NS + (node.mtime_ns + 1) % NS
        invalidate_inodes([inode], False)
        return entries
