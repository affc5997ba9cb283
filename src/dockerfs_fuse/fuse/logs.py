"""`logs` and `logs.follow` (a container's or a Swarm service's): opens and reads
over the engine's shared log spools, and the caps on reads that block.

pyfuse3 serves at most MAX_WORKERS (operations.py) requests at once. A logs.follow read can
block for as long as its container is silent, holding one: opens of
logs.follow get at most MAX_FOLLOWERS of them (ENFILE beyond), one process at
most MAX_FOLLOWERS_PER_PROCESS (EMFILE beyond), and each open one blocked
read at a time (EAGAIN for another; for logs too, whose reads block while
the log so far loads), so the rest of the mount is always served.
"""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

from dockerfs_fuse.engine.logs import LogSpool, LogSpools, TooManyLogs
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import SIGNAL_POLL, process_of, signal_pending

log = logging.getLogger(__name__)

MAX_FOLLOWERS = 256
MAX_FOLLOWERS_PER_PROCESS = 64


class Followers:
    """Open handles whose reads block (logs.follow, wait), counted in total and
    per process, and the reads blocked right now."""

    def __init__(self, total: int = MAX_FOLLOWERS, per_process: int = MAX_FOLLOWERS_PER_PROCESS):
        self.total = total
        self.per_process = per_process
        self.by_process: dict[int, int] = {}
        self.count = 0
        self.waiting_reads = 0

    def take(self, process: int) -> None:
        if self.count >= self.total:
            raise fail(errno.ENFILE)
        if self.by_process.get(process, 0) >= self.per_process:
            raise fail(errno.EMFILE)
        self.count += 1
        self.by_process[process] = self.by_process.get(process, 0) + 1

    def give_back(self, process: int) -> None:
        self.count -= 1
        left = self.by_process.get(process, 0) - 1
        if left > 0:
            self.by_process[process] = left
        else:
            self.by_process.pop(process, None)


class LogHandle(Handle):
    """An open `logs` (read at the kernel's offsets, ends where the log so far
    ends) or `logs.follow` (read in order, blocks like a pipe until the
    container stops), both over the container's shared spool."""

    def __init__(
        self,
        spool: LogSpool,
        follow: bool,
        opener_pid: int,
        opener: int,
        spools: LogSpools,
        followers: Followers,
    ) -> None:
        self.spool = spool
        self.follow = follow
        self.opener_pid = opener_pid
        self.opener = opener  # the opening process (thread group), for the per-process cap
        self.spools = spools  # the engine's, which the spool goes back to
        self.followers = followers
        self.pos = 0
        self.eofs = 0
        self.waiting = False
        self.closed = False

    async def read(self, off: int, size: int) -> bytes:
        if not self.follow:
            return await self._read_at(off, size)
        data = await self._read_at(self.pos, size)
        self.pos += len(data)
        return data

    async def _read_at(self, off: int, size: int) -> bytes:
        """What the spool holds at `off`; at its end, EOF or wait for more."""
        spool = self.spool
        while True:
            if self.closed or spool.closed:
                raise fail(errno.EBADF)
            if off < spool.size:
                return spool.read(off, size)
            if self.follow and spool.follow_error is not None:
                spool.want_more()  # following was cut short (Docker restarted, say): again
            if spool.at_eof(self.follow):
                # Reading at the end again is how `less +F` follows.
                self.eofs += 1
                if self.eofs > 1:
                    spool.want_more()
                return b""
            if self.waiting:
                raise fail(errno.EAGAIN)  # one blocked read per open: see MAX_FOLLOWERS
            self.waiting = True
            self.followers.waiting_reads += 1
            try:
                with trio.move_on_after(SIGNAL_POLL) as waited:
                    await spool.changed()
            finally:
                self.waiting = False
                self.followers.waiting_reads -= 1
            # A reader killed by a signal waits until we answer: see interrupts.
            if waited.cancelled_caught and signal_pending(self.opener_pid):
                raise fail(errno.EINTR)

    def release(self) -> None:
        # A read may still wait on this handle (its reader was killed): it ends now.
        self.closed = True
        self.spools.release(self.spool)
        if self.follow:
            self.followers.give_back(self.opener)


def open_log(
    handles: HandleTable,
    followers: Followers,
    spools: LogSpools,
    key: str,
    name: str,
    follow: bool,
    pid: int,
) -> pyfuse3.FileInfo:
    """Open `name` (logs or logs.follow) of the log spooled as `key`, for `pid`."""
    opener = process_of(pid)
    if follow:
        followers.take(opener)
    try:
        spool = spools.open(key)
    except BaseException as exc:
        if follow:
            followers.give_back(opener)
        if isinstance(exc, TooManyLogs):
            log.warning("open %s/%s: %s", key[:12], name, exc)
            raise fail(errno.ENFILE) from None
        if isinstance(exc, OSError):  # the spool file could not be made
            log.warning("open %s/%s: the log spool: %s", key[:12], name, exc)
            raise fail(_spool_errno(exc)) from None
        raise
    if follow:
        spool.want_more()
    fh = handles.add(LogHandle(spool, follow, pid, opener, spools, followers))
    # Direct I/O: reads are never clipped at a size the kernel cached.
    return file_info(fh, direct_io=True, keep_cache=False, nonseekable=follow)


def _spool_errno(exc: OSError) -> int:
    """The reader's errno when the daemon cannot make a spool file: the
    daemon's own descriptor limit (EMFILE) is not the reader's, so ENFILE."""
    if exc.errno == errno.EMFILE:
        return errno.ENFILE
    return exc.errno or errno.EIO
