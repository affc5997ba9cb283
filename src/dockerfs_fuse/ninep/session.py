"""What a handler sees of its connection: the export, the negotiated dialect
and msize, the fid table, and the connection's shares of threads, open files
and reply bytes.  The connection (connection.py) owns one Session and hands
it to every handler (handlers/); a Tversion starts it afresh.

A handler changes state here (a new fid, an open file) only after its last
blocking call, with no checkpoint between the change and the queueing of its
reply.  So a flushed request has either had no effect, or its reply is
already queued ahead of the Rflush, as flush(5) requires.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Message, Qid
from dockerfs_fuse.ninep.export import Export, NinePError, OpenDir, OpenFile, Parts
from dockerfs_fuse.ninep.resources import (
    CONN_REPLY_BYTES,
    ByteBudget,
    Shared,
    ThreadShare,
    connection_share,
)

MAX_MSIZE = 256 * 1024
MIN_MSIZE = 256
MAX_FIDS = 65536  # per connection
MAX_OPEN = 256  # open files and directories per connection
_T = TypeVar("_T")


@dataclass(slots=True)
class Fid:
    """What a client's fid points at, and its open state once opened."""

    parts: Parts
    qid: Qid
    handle: OpenFile | OpenDir | None = None
    _lock: trio.Lock | None = None

    @property
    def lock(self) -> trio.Lock:
        """Serialises directory reads and FIFO waits on this fid (made on first
        use: most fids are never opened)."""
        if self._lock is None:
            self._lock = trio.Lock()
        return self._lock


class Session:
    """One client's session: dialect, msize, fids, open files and shares."""

    def __init__(self, export: Export, shared: Shared, on_wait: Callable[[], object]) -> None:
        self.export = export
        self.whole_export = export  # what an empty attach name gets
        self.shared = shared
        self.dialect: Dialect | None = None
        self.msize = MAX_MSIZE
        self.fids: dict[int, Fid] = {}
        self.open_files = 0
        self.waiting = 0  # FIFO reads and writes waiting for the other end
        self._on_wait = on_wait
        self.budget = ByteBudget(CONN_REPLY_BYTES, within=shared.reply_bytes)
        self.threads: ThreadShare = connection_share()

    def negotiated(self) -> Dialect:
        """The session's dialect; a request that raced a failed Tversion fails."""
        if self.dialect is None:
            raise NinePError(errno.EPROTO, "version not negotiated")
        return self.dialect

    def iounit(self) -> int:
        return self.msize - codec.IOHDRSZ

    def error_reply(self, tag: int, err: NinePError) -> Message:
        if self.dialect is Dialect.L:
            return codec.Rlerror(tag=tag, ecode=err.errno)
        return codec.Rerror(tag=tag, ename=err.ename, errno=err.errno)

    # ---------------------------------------------------------------- fids

    def fid(self, number: int) -> Fid:
        fid = self.fids.get(number)
        if fid is None:
            raise NinePError(errno.EBADF)
        return fid

    def check_new_fid(self, number: int) -> None:
        if number in self.fids or number == codec.NOFID:
            raise NinePError(errno.EBADF, "fid already in use")
        if len(self.fids) >= MAX_FIDS:
            raise NinePError(errno.EMFILE, f"too many fids: at most {MAX_FIDS} per connection")

    def clunk(self, number: int) -> None:
        self.close(self.fids.pop(number))

    def clunk_all(self) -> None:
        for fid in self.fids.values():
            self.close(fid)
        self.fids.clear()

    def close(self, fid: Fid) -> None:
        handle, fid.handle = fid.handle, None
        if handle is None:
            return
        self.open_files -= 1
        self.close_handle(handle)

    @staticmethod
    def close_handle(handle: OpenFile | OpenDir) -> None:
        if isinstance(handle, OpenFile):
            if handle.pollable and handle.fd >= 0:
                trio.lowlevel.notify_closing(handle.fd)  # wakes its waiting reads
            handle.close()

    # ---------------------------------------------------- blocking and waiting

    async def blocking(
        self,
        fn: Callable[..., _T],
        *args: Any,
        finished: Callable[[outcome.Outcome[_T]], None] | None = None,
        discard: Callable[[_T], None] | None = None,
    ) -> _T:
        """fn(*args) in a worker thread, within this connection's share."""
        async with self.shared.pool.slot(self.threads) as slot:
            return await slot.run(partial(fn, *args), finished=finished, discard=discard)

    @contextlib.contextmanager
    def may_wait(self) -> Iterator[Callable[[], None]]:
        """Yields a function to call when the request starts waiting for input;
        it stops counting as waiting when the block ends."""
        started = False

        def start() -> None:
            nonlocal started
            if not started:
                started = True
                self.waiting += 1
                self._on_wait()

        try:
            yield start
        finally:
            if started:
                self.waiting -= 1
