"""The engine view's `events`: each open its own stream of Docker's events,
read as `logs.follow` is (a LogHandle over the open's spool: a read at the
end blocks, a fatal signal ends it with EINTR, and it counts against the
same caps on reads that block)."""

from __future__ import annotations

import errno
import logging

import pyfuse3
import trio

from dockerfs_fuse.engine.events import SUBSCRIBE_TIMEOUT, EventSpool, EventStreams
from dockerfs_fuse.engine.logs import TooManyLogs
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import interruptible, process_of
from dockerfs_fuse.fuse.logs import Followers, LogHandle

log = logging.getLogger(__name__)


async def open_events(
    handles: HandleTable, followers: Followers, streams: EventStreams, pid: int
) -> pyfuse3.FileInfo:
    """A new stream, returned once Docker has answered: every event after
    the open returns is in it."""
    opener = process_of(pid)
    followers.take(opener)
    try:
        spool = streams.open()
    except TooManyLogs as exc:
        followers.give_back(opener)
        log.warning("open events: %s", exc)
        raise fail(errno.ENFILE) from None
    except BaseException:
        followers.give_back(opener)
        raise
    handle = LogHandle(spool, True, pid, opener, streams, followers)
    try:
        await interruptible(pid, _subscribed, spool)
        if spool.error is not None:
            raise spool.error
    except BaseException:
        handle.release()
        raise
    fh = handles.add(handle)
    # Reads take the stream in order whatever their offset; a nonseekable open
    # would refuse pread(2), which is how the 9P shim reads (ESPIPE).
    return file_info(fh, direct_io=True, keep_cache=False)


async def _subscribed(spool: EventSpool) -> None:
    try:
        with trio.fail_after(SUBSCRIBE_TIMEOUT):
            await spool.subscribed.wait()
    except trio.TooSlowError:
        raise fail(errno.EIO) from None
