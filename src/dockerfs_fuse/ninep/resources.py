"""What the shim spends on its clients, and the caps that keep one client from
spending all of it: threads for blocking calls, bytes of replies not yet
written, and file descriptors.

A blocking call (a walk, a stat, a file read) runs in a worker thread, and a
thread blocked inside the kernel cannot be taken back: a read of `logs.follow`
on the dockerfs mount waits in FUSE until Docker sends a line.  So threads are
accounted in two lanes.  A call starts in the *fast* lane; once it has run for
SLOW_AFTER seconds it moves to the *slow* lane, so calls that block never sit
on the threads that prompt calls need.  Each connection has its own share of
both lanes (ThreadShare) inside the process-wide one, so no connection holds
more than its share.  A call whose request is flushed, or whose connection
ends, gives its connection's share back at once; its thread, still blocked,
keeps only a process-wide slot until it returns.

Everything here runs in the trio thread; worker threads only run the blocking
function and hand its outcome back through the trio token.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TypeVar

import outcome
import trio

from dockerfs_fuse.ninep.export import NinePError

_T = TypeVar("_T")

SLOW_AFTER = 0.2  # seconds before a blocking call counts as blocked
CONN_FAST_THREADS = 8  # per connection: calls that return promptly
CONN_SLOW_THREADS = 64  # per connection: calls that block (reads that follow)
FAST_THREADS = 64  # the whole shim
SLOW_THREADS = 512  # the whole shim, flushed calls still blocked included
RESERVE_FDS = 64  # descriptors never given to files: accepts, listings, logging
CONN_REPLY_BYTES = 4 << 20  # read data per connection not yet written to its socket
REPLY_BYTES = 256 << 20  # the same, for the whole shim


@dataclass
class ThreadShare:
    """Slots in the two lanes, for one connection or for the whole process."""

    fast: trio.Semaphore
    slow: trio.Semaphore

    @classmethod
    def of(cls, fast: int, slow: int) -> ThreadShare:
        return cls(trio.Semaphore(fast, max_value=fast), trio.Semaphore(slow, max_value=slow))


def connection_share() -> ThreadShare:
    return ThreadShare.of(CONN_FAST_THREADS, CONN_SLOW_THREADS)


def _trade(
    held: trio.Semaphore | None, old: trio.Semaphore, new: trio.Semaphore
) -> trio.Semaphore | None:
    """`held` traded for a slot in `new` if it is `old` and `new` has room."""
    if held is not old:
        return held
    try:
        new.acquire_nowait()
    except trio.WouldBlock:
        return held
    old.release()
    return new


class ThreadSlot:
    """A slot for one blocking call, in a connection's share (held until the
    `async with` block ends, so that what the caller does with the result
    still counts against the connection) and in the process's share (held by
    the thread until it returns, even if the call is abandoned)."""

    def __init__(self, process: ThreadShare, mine: ThreadShare) -> None:
        self._process = process
        self._mine = mine
        self._conn: trio.Semaphore | None = mine.fast
        self._global: trio.Semaphore | None = process.fast
        self._running = False

    def leave(self) -> None:
        if self._conn is not None:
            self._conn.release()
            self._conn = None
        if self._global is not None and not self._running:
            self._global.release()
            self._global = None

    def _thread_returned(self) -> None:
        self._running = False
        if self._global is not None:
            self._global.release()
            self._global = None

    async def run(
        self,
        fn: Callable[[], _T],
        *,
        finished: Callable[[outcome.Outcome[_T]], None] | None = None,
        discard: Callable[[_T], None] | None = None,
        blocked: Callable[[], None] | None = None,
    ) -> _T:
        """fn() in a worker thread.  Cancellable at any point: a cancelled call
        returns at once and its thread is abandoned.  `finished` runs (in the
        trio thread) when the thread returns, cancelled or not; `discard` gets
        the result of a call that was cancelled, so that what it made (an open
        file) is undone; `blocked` runs when the call moves to the slow lane."""
        assert not self._running and self._global is not None, "one call per slot"
        done = trio.Event()
        results: list[outcome.Outcome[_T]] = []
        orphaned = False

        def finish(result: outcome.Outcome[_T]) -> None:
            self._thread_returned()
            results.append(result)
            done.set()
            if finished is not None:
                finished(result)
            if orphaned and discard is not None and isinstance(result, outcome.Value):
                discard(result.value)

        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[_T]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the shim is exiting
                token.run_sync_soon(finish, result)

        self._running = True
        trio.lowlevel.start_thread_soon(fn, deliver)
        try:
            with trio.move_on_after(SLOW_AFTER):
                await done.wait()
            if not done.is_set():
                self._conn = _trade(self._conn, self._mine.fast, self._mine.slow)
                self._global = _trade(self._global, self._process.fast, self._process.slow)
                if blocked is not None:
                    blocked()
                await done.wait()
        except BaseException:
            if not done.is_set():
                # The request is gone: the connection's slot is given back as
                # the block ends; the thread waits out its call on a
                # process-wide slow slot if one is left.
                orphaned = True
                self._global = _trade(self._global, self._process.fast, self._process.slow)
            elif discard is not None and isinstance(results[0], outcome.Value):
                discard(results[0].value)  # done, but cancelled before we saw it
            raise
        return results[0].unwrap()


class ThreadPool:
    """Worker threads for blocking calls, within the lanes' caps."""

    def __init__(self, fast: int = FAST_THREADS, slow: int = SLOW_THREADS) -> None:
        self.share = ThreadShare.of(fast, slow)

    @contextlib.asynccontextmanager
    async def slot(self, mine: ThreadShare) -> AsyncIterator[ThreadSlot]:
        """Wait for a fast slot in `mine`, then in the process's share."""
        await mine.fast.acquire()
        try:
            await self.share.fast.acquire()
        except BaseException:
            mine.fast.release()
            raise
        slot = ThreadSlot(self.share, mine)
        try:
            yield slot
        finally:
            slot.leave()


class ByteBudget:
    """Bytes of read data that may be held before their replies are written:
    a connection's, inside the whole shim's (`within`).  A client that does
    not read its replies stops getting its reads served once its budget is
    spent: backpressure, not buffering."""

    def __init__(self, total: int, within: ByteBudget | None = None) -> None:
        self.total = total
        self.free = total
        self.within = within
        self._lot = trio.lowlevel.ParkingLot()

    async def take(self, size: int) -> int:
        """Wait until `size` bytes (at most the whole budget) are free here and
        in the enclosing budget; returns what was taken, for `give`."""
        size = min(size, self.total)
        await trio.lowlevel.checkpoint_if_cancelled()
        while self.free < size:
            await self._lot.park()
        self.free -= size
        if self.within is not None:
            try:
                await self.within.take(size)
            except BaseException:
                self._give_here(size)
                raise
        return size

    def give(self, size: int) -> None:
        self._give_here(size)
        if self.within is not None:
            self.within.give(size)

    def _give_here(self, size: int) -> None:
        self.free += size
        self._lot.unpark_all()


def raise_fd_limit() -> int:
    """Lift the soft descriptor limit to the hard one (as Go's runtime does):
    the caps below are what bound a client, not a low default."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


def _descriptors_in_use() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus listdir's own
    except OSError:
        return 16


class FdBudget:
    """Descriptors of the whole process: connections and open files.  Files
    may use all but RESERVE_FDS of them, so that accepting a new connection
    and listing a directory for it always find a descriptor."""

    def __init__(self, reserve: int = RESERVE_FDS) -> None:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.limit = soft if soft != resource.RLIM_INFINITY else 1 << 20
        self.reserve = min(reserve, self.limit // 4)
        self.baseline = _descriptors_in_use()
        self.connections = 0
        self.files = 0

    def take_file(self) -> None:
        used = self.baseline + self.connections + self.files
        if used + 1 + self.reserve > self.limit:
            raise NinePError(errno.ENFILE, "too many open files in the shim")
        self.files += 1

    def give_file(self) -> None:
        self.files -= 1


@dataclass
class Shared:
    """What every connection of one server draws on."""

    pool: ThreadPool
    fds: FdBudget
    reply_bytes: ByteBudget

    @classmethod
    def for_server(cls) -> Shared:
        return cls(ThreadPool(), FdBudget(), ByteBudget(REPLY_BYTES))
