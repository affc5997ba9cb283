"""A container's `wait`: the first read blocks until it stops, then reads its exit code."""

from __future__ import annotations

import errno

import pyfuse3

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.exits import ExitWait, ExitWaits, TooManyWaits, WaitCancelled
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import interruptible, process_of
from dockerfs_fuse.fuse.logs import Followers
from dockerfs_fuse.model.render import render_wait


class WaitHandle(Handle):
    """An open `wait`: blocks at its first read until the container stops."""

    def __init__(
        self,
        cache: EngineCache,
        cid: str,
        opener_pid: int,
        opener: int,
        waits: ExitWaits,
        followers: Followers,
    ) -> None:
        self.cache = cache
        self.cid = cid
        self.opener_pid = opener_pid
        self.opener = opener  # the opening process, for the follower caps
        self.waits = waits
        self.followers = followers
        self.shared: ExitWait | None = None
        self.data: bytes | None = None
        self.waiting = False

    async def read(self, off: int, size: int) -> bytes:
        """The first read blocks until the container is not running; then its exit code."""
        if self.data is None:
            if self.waiting:
                raise fail(errno.EAGAIN)  # see MAX_FOLLOWERS
            shared = self.shared = self.shared or self._join()
            self.waiting = True
            self.followers.waiting_reads += 1
            try:
                code = await interruptible(self.opener_pid, shared.code)
            except WaitCancelled:
                raise fail(errno.EIO) from None
            finally:
                self.waiting = False
                self.followers.waiting_reads -= 1
            self.data = render_wait(code)
        return self.data[off : off + size]

    def _join(self) -> ExitWait:
        try:
            return self.waits.join(self.cache.name, self.cache.source, self.cid)
        except TooManyWaits:
            raise fail(errno.ENFILE) from None

    def release(self) -> None:
        self.followers.give_back(self.opener)
        shared, self.shared = self.shared, None
        if shared is not None:
            self.waits.leave(self.cache.name, self.cid, shared)


def open_wait(
    handles: HandleTable,
    followers: Followers,
    waits: ExitWaits,
    cache: EngineCache,
    cid: str,
    pid: int,
) -> pyfuse3.FileInfo:
    opener = process_of(pid)
    followers.take(opener)  # a read blocks like logs.follow's: the same caps
    handle = WaitHandle(cache, cid, pid, opener, waits, followers)
    return file_info(handles.add(handle), direct_io=True, keep_cache=False)
