"""Changes to the inode table, pushed to the kernel's caches.

The engines' caches change the table from events and refreshes; each batch
of `Changes` comes here (`Invalidator.apply`, never blocking) and a
background task (`Invalidator.run`) tells the kernel to drop the entries,
attributes, pages and listings it holds for them.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence

import pyfuse3
import trio

from dockerfs_fuse.model.inodes import Changes

log = logging.getLogger(__name__)

# Invalidation batches waiting for the invalidator; beyond, they are merged (Backlog).
INVALIDATION_QUEUE = 1000
# A reply that waits for the kernel to be told of changes (told_kernel) waits
# at most this long: a bound, never reached unless the kernel stalls.
TOLD_KERNEL_WAIT = 5.0


class Backlog:
    """Invalidations that found the queue full, merged until the invalidator takes them.

    Each entry and inode is held once, so memory grows with what changed
    (bounded by the tree), not with how often it changed.
    """

    def __init__(self) -> None:
        self._removed: dict[tuple[int, str], int] = {}
        self._changed: dict[int, None] = {}  # a dict keeps the order they came in

    def __bool__(self) -> bool:
        return bool(self._removed or self._changed)

    def add(self, changes: Changes) -> None:
        for parent, name, inode in changes.removed:
            self._removed[parent, name] = inode
        self._changed.update(dict.fromkeys(changes.changed))

    def take(self) -> Changes:
        """Everything merged so far, leaving the backlog empty."""
        taken = Changes(
            removed=[(parent, name, inode) for (parent, name), inode in self._removed.items()],
            changed=list(self._changed),
        )
        self._removed, self._changed = {}, {}
        return taken


class Invalidator:
    """The queue of changes on their way to the kernel, and the task that takes them there.

    `kernel_cache`: the kernel caches pages and listings too (the pyfuse3
    patch), so a changed inode drops them, not only its attributes.
    """

    def __init__(self, kernel_cache: bool = False) -> None:
        self.kernel_cache = kernel_cache
        # Changes to push, and markers (told_kernel) set once all before them are pushed.
        self._send, self._recv = trio.open_memory_channel[Changes | trio.Event](INVALIDATION_QUEUE)
        self._backlog = Backlog()
        # Which inodes are directories (the filesystem says, once it is built):
        # those are told here, without a thread (see `_push`).
        self.is_dir: Callable[[int], bool] = lambda _inode: False

    def apply(self, changes: Changes) -> None:
        """Hand kernel invalidations to the background task, never blocking a request.

        A lost invalidation is stale for up to the kernel's timeout (an hour
        with kernel caching), so when the queue is full the batch is merged
        into the backlog, which the invalidator drains after each item.
        """
        try:
            self._send.send_nowait(changes)
        except trio.WouldBlock:
            if not self._backlog:
                log.warning("invalidation queue full; merging invalidations until it drains")
            self._backlog.add(changes)

    async def run(self) -> None:
        """Push cache invalidations to the kernel (a task in the main nursery).

        Entry invalidation goes through pyfuse3's own notification thread
        (`invalidate_entry_async`); attribute invalidation is a quick write
        to /dev/fuse, done off the trio thread so a request is never waited on.
        The backlog (filled only while the queue is full, so another item
        always comes) is pushed after each item.
        """
        async for item in self._recv:
            if not isinstance(item, trio.Event):
                await self._push(item)
            if self._backlog:
                await self._push(self._backlog.take())
            if isinstance(item, trio.Event):
                item.set()

    async def _push(self, changes: Changes) -> None:
        for parent, name, _inode in changes.removed:
            try:
                # Not notify_delete (deleted=inode): that fails with
                # ENOTEMPTY for a directory whose children the kernel caches.
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except Exception as exc:
                log.debug("invalidate_entry_async(%d, %s): %s", parent, name, exc)
        if not changes.changed:
            return
        # Cached pages and listings go too (kernel caching), not only attributes.
        # Dropping a file's pages waits for each page's lock, which a read we
        # have yet to answer holds: that is done off the trio thread. Nothing
        # of ours holds a directory's cached listing or any attribute, so those
        # are written here, sparing a refreshed listing a thread hop (about a
        # millisecond of a first `ls volumes`).
        if changes.removed:
            # Where entries went too, the thread hop stays: meanwhile pyfuse3's
            # notification thread drops them, so a reply that follows
            # told_kernel (a `ctl rm`) rarely finds a removed name still cached.
            await trio.to_thread.run_sync(invalidate_inodes, changes.changed, not self.kernel_cache)
            return
        if not self.kernel_cache:
            invalidate_inodes(changes.changed, True)
            return
        files = [inode for inode in changes.changed if not self.is_dir(inode)]
        if len(files) < len(changes.changed):
            invalidate_inodes([i for i in changes.changed if self.is_dir(i)], False)
        if files:
            await trio.to_thread.run_sync(invalidate_inodes, files, False)

    async def told_kernel(self) -> None:
        """Wait until what changed so far has been pushed to the kernel, so
        that no read after a reply (a root listing, a ctl write) sees what the
        kernel cached before it: attributes and pages are dropped by then.
        Dropped entries are only queued (pyfuse3's thread drops them): the
        kernel holds a directory's lock while our listing of it is pending.
        """
        told = trio.Event()
        with trio.move_on_after(TOLD_KERNEL_WAIT) as waited:
            await self._send.send(told)
            await told.wait()
        if waited.cancelled_caught:
            log.warning("invalidations not pushed within %gs; replying anyway", TOLD_KERNEL_WAIT)


def invalidate_inodes(inodes: Sequence[int], attr_only: bool) -> None:
    """Drop what the kernel caches for these inodes (in a worker thread: it writes to /dev/fuse)."""
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(inode), attr_only)
        except OSError as exc:
            # ENOENT: the kernel already dropped the inode; nothing to do.
            if exc.errno != errno.ENOENT:
                log.debug("invalidate_inode(%d): %s", inode, exc)
