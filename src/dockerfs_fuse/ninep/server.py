"""The 9P server: trio listeners, one task per connection, one task per request.

A connection owns its fid table, its outstanding tags and its limits.  One
task reads frames, one writes replies in the order they were queued, and every
request other than Tversion and Tflush runs in a task of its own, its
blocking calls in worker threads (resources.py says how those are shared), so
a slow request holds up neither its neighbours on the same connection nor
other clients.

A request is outstanding from the moment its frame is read until its reply has
been written to the socket.  At MAX_OUTSTANDING the connection is no longer
read: a client that does not read its replies stops being served instead of
making the shim buffer them (backpressure, not buffering).

A handler changes state (a new fid, an open file) only after its last
blocking call, with no checkpoint between the change and the queueing of its
reply.  So a flushed request has either had no effect, or its reply is
already queued ahead of the Rflush, as flush(5) requires.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import logging
import math
import os
import re
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import outcome
import trio

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Message, Qid
from dockerfs_fuse.ninep.export import Export, NinePError, OpenDir, OpenFile, Parts, denied
from dockerfs_fuse.ninep.resources import (
    CONN_REPLY_BYTES,
    REPLY_BYTES,
    ByteBudget,
    FdBudget,
    ThreadPool,
    ThreadShare,
    connection_share,
)

log = logging.getLogger("dockerfs_fuse.ninep")

MAX_MSIZE = 256 * 1024
MIN_MSIZE = 256
MAX_OUTSTANDING = 256  # per connection, from frame read to reply written
MAX_FIDS = 65536  # per connection
MAX_OPEN = 256  # open files and directories per connection
LINGER = 30.0  # seconds a half-closed connection waits for replies still to come
_WRITE_BATCH = 64 * 1024  # small replies are joined up to this size per send
_T = TypeVar("_T")

# 9P2000.L open flags (Linux generic values, as the kernel puts them on the wire).
_L_ACCMODE = 0o3
_L_TRUNC = 0o1000

# accept(2) errors that say "not now" rather than "never".
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_IGNORABLE_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_ACCEPT_BACKOFF = (0.05, 1.0)  # first and longest pause while out of descriptors


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


@dataclass(slots=True)
class Pending:
    """An outstanding request.  `flushed` means its answer must never be sent."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    flushed: bool = False


@dataclass
class Shared:
    """What every connection of one server draws on."""

    pool: ThreadPool
    fds: FdBudget
    reply_bytes: ByteBudget


class ConnectionClosed(Exception):
    """The client broke the protocol badly enough that the connection ends."""


def version_reply(requested: str) -> tuple[Dialect | None, str]:
    """The dialect to speak for a client's version string, per version(5): a
    suffix after the first period is dropped unless we speak it, and 9Pnnnn
    is answered 9P2000 when nnnn is 2000 or more."""
    for dialect in (Dialect.L, Dialect.U):
        if requested == dialect.value:
            return dialect, dialect.value
    base = requested.split(".", 1)[0]
    number = re.fullmatch(r"9P([0-9]+)", base)
    if number and int(number.group(1)) >= 2000:
        return Dialect.P2000, Dialect.P2000.value
    return None, "unknown"


def _held_bytes(reply: Message) -> int:
    """Read data was taken from the byte budget by the handler that read it;
    the writer gives it back once the reply is on the wire."""
    if isinstance(reply, codec.Rread | codec.Rreaddir):
        return len(reply.data)
    return 0


class Connection:
    """One client: its dialect, msize, fids, outstanding tags and limits."""

    def __init__(self, export: Export, stream: trio.abc.Stream, peer: str, shared: Shared) -> None:
        self.export = export
        self.whole_export = export  # what an empty attach name gets
        self.stream = stream
        self.peer = peer
        self.shared = shared
        self.dialect: Dialect | None = None
        self.msize = MAX_MSIZE
        self.fids: dict[int, Fid] = {}
        self.open_files = 0
        self.pending: dict[int, Pending] = {}
        self.outstanding = trio.Semaphore(MAX_OUTSTANDING, max_value=MAX_OUTSTANDING)
        self.waiting = 0  # FIFO reads and writes waiting for the other end
        self._settled = trio.lowlevel.ParkingLot()
        self.budget = ByteBudget(CONN_REPLY_BYTES, within=shared.reply_bytes)
        self.threads: ThreadShare = connection_share()
        self.splitter = codec.FrameSplitter(MAX_MSIZE)
        self._replies, self._to_write = trio.open_memory_channel[tuple[bytes, int]](math.inf)
        self._handlers: dict[type[Message], Callable[[Any], Awaitable[Message]]] = {
            codec.Tauth: self.auth,
            codec.Tattach: self.attach,
            codec.Twalk: self.walk,
            codec.Topen: self.open,
            codec.Tlopen: self.lopen,
            codec.Tread: self.read,
            codec.Twrite: self.write,
            codec.Tclunk: self.clunk,
            codec.Tremove: self.remove,
            codec.Tstat: self.stat,
            codec.Twstat: self.wstat,
            codec.Tgetattr: self.getattr,
            codec.Tsetattr: self.setattr,
            codec.Tstatfs: self.statfs,
            codec.Treadlink: self.readlink,
            codec.Treaddir: self.readdir,
            codec.Txattrwalk: self.refuse_xattr,
            codec.Txattrcreate: self.refuse_xattr,
            codec.Tfsync: self.fsync,
            codec.Tlock: self.lock,
            codec.Tgetlock: self.getlock,
        }

    # -------------------------------------------------------------- plumbing

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                try:
                    await self._read_loop(nursery)
                    with trio.move_on_after(LINGER):
                        await self._wait_settled()
                except ConnectionClosed as exc:
                    log.info("%s: closing connection: %s", self.peer, exc)
                finally:
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.debug("%s: connection lost: %s", self.peer, group.exceptions[0])
        finally:
            self._abort_all()
            self._clunk_all()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            log.debug("%s: disconnected", self.peer)

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            data = await self.stream.receive_some(65536)
            if not data:
                return
            self.splitter.feed(data)
            while True:
                try:
                    frame = self.splitter.next_frame()
                except codec.FrameError as exc:
                    raise ConnectionClosed(str(exc)) from exc
                if frame is None:
                    break
                await self._accept(frame, nursery)

    async def _accept(self, frame: bytes, nursery: trio.Nursery) -> None:
        """Decode one frame, take an outstanding slot for it, and answer it here
        or start its task.  The slot is given back when its reply is written."""
        try:
            msg = codec.decode(frame, self.dialect or Dialect.P2000)
        except codec.DecodeError as exc:
            if exc.tag is None or exc.tag in self.pending:
                raise ConnectionClosed(str(exc)) from exc
            await self._take_slot()
            self._queue_reply(self.error_reply(exc.tag, NinePError(errno.EINVAL, str(exc))))
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s <- %s", self.peer, _brief(msg))
        if msg.tag in self.pending:
            raise ConnectionClosed(f"tag {msg.tag} reused while outstanding")
        if isinstance(msg, codec.Tflush):
            # The flush takes effect before it waits for a slot: the slot it
            # waits for may be the one held by the request it flushes.
            self._flush(msg.oldtag)
            await self._take_slot()
            self._queue_reply(codec.Rflush(tag=msg.tag))
            return
        await self._take_slot()
        if isinstance(msg, codec.Tversion):
            reply, dialect = self.version(msg)
            self._queue_reply(reply, dialect)
        elif self.dialect is None or type(msg) not in codec.REQUESTS[self.dialect]:
            reason = "version not negotiated" if self.dialect is None else "unexpected message"
            self._queue_reply(self.error_reply(msg.tag, NinePError(errno.EOPNOTSUPP, reason)))
        else:
            pending = Pending()
            self.pending[msg.tag] = pending
            nursery.start_soon(self._serve, msg, pending)

    async def _take_slot(self) -> None:
        """An outstanding slot for the frame just read; waits only when the
        client is at MAX_OUTSTANDING (receive_some is the loop's checkpoint)."""
        try:
            self.outstanding.acquire_nowait()
        except trio.WouldBlock:
            await self.outstanding.acquire()

    async def _serve(self, msg: Message, pending: Pending) -> None:
        queued = False
        try:
            if pending.flushed:  # flushed, or a Tversion came, before we started
                return
            with pending.scope:
                reply = await self._answer(msg)
            if pending.flushed:
                # Flushed after the handler's last checkpoint: handlers change
                # state only after a cancellation check, so none was made.
                return
            # No checkpoint from the handler's last state change to here.
            if self.pending.get(msg.tag) is pending:
                del self.pending[msg.tag]
            self._queue_reply(reply)
            queued = True
        finally:
            if not queued:
                self._written(0)

    async def _answer(self, msg: Message) -> Message:
        handler = self._handlers.get(type(msg), self.not_supported)
        try:
            return await handler(msg)
        except NinePError as exc:
            return self.error_reply(msg.tag, exc)
        except OSError as exc:
            return self.error_reply(msg.tag, NinePError.from_os(exc))
        except Exception:
            log.exception("%s: %s failed", self.peer, type(msg).__name__)
            return self.error_reply(msg.tag, NinePError(errno.EIO))

    def _queue_reply(self, reply: Message, dialect: Dialect | None = None) -> None:
        """Queue a reply for the writer; never blocks, so nothing can run
        between a handler's state change and its reply taking its place in
        line.  The queue is bounded by the outstanding slots."""
        held = _held_bytes(reply)
        frame = self._encode(reply, dialect or self.dialect or Dialect.P2000)
        try:
            self._replies.send_nowait((frame, held))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._written(held)  # the connection is closing

    def _encode(self, reply: Message, dialect: Dialect) -> bytes:
        try:
            frame = codec.encode(reply, dialect)
        except (ValueError, OverflowError, struct.error):
            log.exception("%s: cannot encode %s", self.peer, _brief(reply))
            frame = codec.encode(self.error_reply(reply.tag, NinePError(errno.EIO)), dialect)
        if len(frame) > self.msize:  # e.g. a long link target under a tiny msize
            err = NinePError(errno.EMSGSIZE, "reply does not fit in msize")
            frame = codec.encode(self.error_reply(reply.tag, err), dialect)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", self.peer, _brief(reply))
        return frame

    async def _write_loop(self) -> None:
        """Writes replies in queue order, as many per system call as are waiting."""
        async for frame, held in self._to_write:
            await trio.lowlevel.checkpoint()  # let the replies of a pipeline gather
            frames, helds = [frame], [held]
            size = len(frame)
            while size < _WRITE_BATCH:
                try:
                    frame, held = self._to_write.receive_nowait()
                except trio.WouldBlock:
                    break
                frames.append(frame)
                helds.append(held)
                size += len(frame)
            await self.stream.send_all(frames[0] if len(frames) == 1 else b"".join(frames))
            for held in helds:
                self._written(held)

    def _written(self, held: int) -> None:
        """One request is no longer outstanding (answered, or dropped)."""
        if held:
            self.budget.give(held)
        self.outstanding.release()
        self._settled.unpark_all()

    async def _wait_settled(self) -> None:
        """After end of file (within LINGER): until every reply in flight is
        written, except those of FIFO reads and writes still waiting.  A
        half-close cannot be told from a hang-up, and a client that is gone
        must not keep a FIFO read waiting until data comes."""
        while MAX_OUTSTANDING - self.outstanding.value > self.waiting:
            await self._settled.park()

    @contextlib.contextmanager
    def _may_wait(self) -> Iterator[Callable[[], None]]:
        """Yields a function to call when the request starts waiting for input;
        it stops counting as waiting when the block ends."""
        started = False

        def start() -> None:
            nonlocal started
            if not started:
                started = True
                self.waiting += 1
                self._settled.unpark_all()

        try:
            yield start
        finally:
            if started:
                self.waiting -= 1

    def error_reply(self, tag: int, err: NinePError) -> Message:
        if self.dialect is Dialect.L:
            return codec.Rlerror(tag=tag, ecode=err.errno)
        return codec.Rerror(tag=tag, ename=err.ename, errno=err.errno)

    def _flush(self, oldtag: int) -> None:
        pending = self.pending.pop(oldtag, None)
        if pending is not None:
            pending.flushed = True
            pending.scope.cancel()

    def _abort_all(self) -> None:
        for tag in list(self.pending):
            self._flush(tag)

    def _clunk_all(self) -> None:
        for fid in self.fids.values():
            self._close(fid)
        self.fids.clear()

    def _close(self, fid: Fid) -> None:
        handle, fid.handle = fid.handle, None
        if handle is None:
            return
        self.open_files -= 1
        self._close_handle(handle)

    @staticmethod
    def _close_handle(handle: OpenFile | OpenDir) -> None:
        if isinstance(handle, OpenFile):
            if handle.pollable and handle.fd >= 0:
                trio.lowlevel.notify_closing(handle.fd)  # wakes its waiting reads
            handle.close()

    async def _blocking(
        self,
        fn: Callable[..., _T],
        *args: Any,
        finished: Callable[[outcome.Outcome[_T]], None] | None = None,
        discard: Callable[[_T], None] | None = None,
    ) -> _T:
        """fn(*args) in a worker thread, within this connection's share."""
        async with self.shared.pool.slot(self.threads) as slot:
            return await slot.run(partial(fn, *args), finished=finished, discard=discard)

    # --------------------------------------------------- session messages

    def version(self, msg: codec.Tversion) -> tuple[Message, Dialect]:
        """Tversion starts a new session: everything outstanding is aborted and
        every fid clunked, whatever the outcome.  Returns the reply and the
        dialect to encode it in (a refusal speaks the dialect asked for)."""
        self._abort_all()
        self._clunk_all()
        asked = {d.value: d for d in Dialect}.get(msg.version, Dialect.P2000)
        if msg.msize < MIN_MSIZE:
            self.dialect = None
            reason = f"msize {msg.msize} too small: at least {MIN_MSIZE}"
            if asked is Dialect.L:
                return codec.Rlerror(tag=msg.tag, ecode=errno.EINVAL), asked
            return codec.Rerror(tag=msg.tag, ename=reason, errno=errno.EINVAL), asked
        self.dialect, name = version_reply(msg.version)
        self.msize = min(msg.msize, MAX_MSIZE)
        self.splitter.max_size = self.msize
        return codec.Rversion(tag=msg.tag, msize=self.msize, version=name), asked

    async def auth(self, msg: codec.Tauth) -> Message:
        # ENOENT is what diod's client library reads as "auth not required".
        raise NinePError(errno.ENOENT, "no authentication required")

    async def attach(self, msg: codec.Tattach) -> Message:
        if msg.afid != codec.NOFID:
            raise NinePError(errno.EINVAL, "no authentication required")
        self._check_new_fid(msg.fid)
        # The attach name selects a directory of the export: one per connection.
        export = await self._blocking(self.whole_export.subtree, msg.aname)
        if self.fids and export.root != self.export.root:
            raise NinePError(errno.EINVAL, "one attach name per connection")
        self.export = export
        parts, info = await self._blocking(self.export.view, (), self._dialect())
        qid = self.export.qid(info)
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_new_fid(msg.fid)
        self.fids[msg.fid] = Fid(parts, qid)
        return codec.Rattach(tag=msg.tag, qid=qid)

    def _dialect(self) -> Dialect:
        if self.dialect is None:  # a failed Tversion raced this request
            raise NinePError(errno.EPROTO, "version not negotiated")
        return self.dialect

    def _fid(self, number: int) -> Fid:
        fid = self.fids.get(number)
        if fid is None:
            raise NinePError(errno.EBADF)
        return fid

    def _check_new_fid(self, number: int) -> None:
        if number in self.fids or number == codec.NOFID:
            raise NinePError(errno.EBADF, "fid already in use")
        if len(self.fids) >= MAX_FIDS:
            raise NinePError(errno.EMFILE, f"too many fids: at most {MAX_FIDS} per connection")

    async def not_supported(self, msg: Message) -> Message:
        """Creating, linking, renaming and removing are never allowed over 9P:
        the export mirrors a tree that only Docker changes."""
        raise denied()

    # ---------------------------------------------------------------- walk

    async def walk(self, msg: codec.Twalk) -> Message:
        fid = self._fid(msg.fid)
        if fid.handle is not None and msg.newfid == msg.fid:
            # Walking from an open fid is tolerated (diod's tools do it), but
            # replacing an open fid would strand its handle.
            raise NinePError(errno.EBADF, "cannot walk an open fid onto itself")
        if msg.newfid != msg.fid:
            self._check_new_fid(msg.newfid)
        if len(msg.wnames) > codec.MAXWELEM:
            raise NinePError(errno.EINVAL, "too many names in walk")
        if not msg.wnames:
            self.fids[msg.newfid] = Fid(fid.parts, fid.qid)
            return codec.Rwalk(tag=msg.tag, qids=())
        steps = await self._blocking(self.export.walk, fid.parts, msg.wnames, self._dialect())
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(steps) == len(msg.wnames):
            if msg.newfid != msg.fid:
                self._check_new_fid(msg.newfid)
            self.fids[msg.newfid] = Fid(*steps[-1])
        return codec.Rwalk(tag=msg.tag, qids=tuple(qid for _, qid in steps))

    # ---------------------------------------------------------------- open

    async def open(self, msg: codec.Topen) -> Message:
        access = msg.mode & 3
        if msg.mode & codec.ORCLOSE:
            raise denied()
        qid = await self._open(
            msg.fid,
            read=access in (codec.OREAD, codec.ORDWR, codec.OEXEC),
            write=access in (codec.OWRITE, codec.ORDWR),
            truncate=bool(msg.mode & codec.OTRUNC),
        )
        return codec.Ropen(tag=msg.tag, qid=qid, iounit=self.iounit())

    async def lopen(self, msg: codec.Tlopen) -> Message:
        access = msg.flags & _L_ACCMODE
        qid = await self._open(
            msg.fid,
            read=access in (0, 2),
            write=access in (1, 2),
            truncate=bool(msg.flags & _L_TRUNC),
        )
        return codec.Rlopen(tag=msg.tag, qid=qid, iounit=self.iounit())

    async def _open(self, number: int, read: bool, write: bool, truncate: bool) -> Qid:
        """Counts against this connection's MAX_OPEN and the process's
        descriptors before the open starts; a flushed open that completes
        later is closed again, so it has had no effect."""
        fid = self._fid(number)
        if fid.handle is not None:
            raise NinePError(errno.EBADF, "fid already open")
        if self.open_files >= MAX_OPEN:
            reason = f"too many open files: at most {MAX_OPEN} per connection"
            raise NinePError(errno.EMFILE, reason)
        dialect = self._dialect()
        fds = self.shared.fds
        fds.take_file()

        def opened(result: outcome.Outcome[OpenFile | OpenDir]) -> None:
            """The descriptor now belongs to the handle (or was never made)."""
            if isinstance(result, outcome.Value) and isinstance(result.value, OpenFile):
                result.value.on_close = fds.give_file
            else:
                fds.give_file()

        self.open_files += 1
        started = False  # from then on, `opened` settles the descriptor
        try:
            async with self.shared.pool.slot(self.threads) as slot:
                started = True
                handle = await slot.run(
                    partial(self.export.open, fid.parts, dialect, read, write, truncate),
                    finished=opened,
                    discard=self._close_handle,
                )
            try:
                await trio.lowlevel.checkpoint_if_cancelled()
                if self.fids.get(number) is not fid or fid.handle is not None:
                    raise NinePError(errno.EBADF, "fid changed during open")
            except BaseException:
                self._close_handle(handle)
                raise
        except BaseException:
            self.open_files -= 1
            if not started:
                fds.give_file()
            raise
        fid.handle = handle
        return fid.qid

    def iounit(self) -> int:
        return self.msize - codec.IOHDRSZ

    # ---------------------------------------------------------- read/write

    async def read(self, msg: codec.Tread) -> Message:
        fid = self._fid(msg.fid)
        count = min(msg.count, self.iounit())
        handle = fid.handle
        if isinstance(handle, OpenDir):
            data = await self._read_dir(fid, handle, msg.offset, count)
        elif isinstance(handle, OpenFile) and handle.pollable:
            data = await self._read_fifo(fid, handle, count)
        elif isinstance(handle, OpenFile):
            data = await self._read_file(handle, msg.offset, count)
        else:
            raise NinePError(errno.EBADF, "fid not open")
        return codec.Rread(tag=msg.tag, data=data)

    async def _read_file(self, handle: OpenFile, offset: int, count: int) -> bytes:
        """A read in a worker thread: it may block for as long as the file likes
        (a FUSE file waiting on Docker).  A flush abandons the thread, which
        lets go of the handle when it finally returns.

        The count is taken from the byte budget before reading, so a client
        that does not read its replies stops its reads; a read that blocks
        gives it back while it waits (a blocked read holds no data) and takes
        what it got when it returns, still within its connection's slot."""
        taken = await self.budget.take(count)

        def blocked() -> None:
            nonlocal taken
            self.budget.give(taken)
            taken = 0

        try:
            async with self.shared.pool.slot(self.threads) as slot:
                handle.acquire()
                data = await slot.run(
                    partial(handle.read, offset, count),
                    finished=lambda _: handle.release(),
                    blocked=blocked,
                )
                if not taken:
                    taken = await self.budget.take(len(data))
        except BaseException:
            self.budget.give(taken)
            raise
        self.budget.give(taken - len(data))
        return data

    async def _read_fifo(self, fid: Fid, handle: OpenFile, count: int) -> bytes:
        """A FIFO read waits in trio, holding no thread; a flush or a clunk
        ends the wait at once."""
        handle.acquire()
        try:
            with self._may_wait() as waiting:
                if fid.lock.locked():
                    waiting()  # behind another read of this FIFO
                async with fid.lock:  # one waiter per descriptor
                    while True:
                        taken = await self.budget.take(count)
                        try:
                            data = handle.read_ready(count)
                        except BlockingIOError:
                            self.budget.give(taken)
                        except BaseException:
                            self.budget.give(taken)
                            raise
                        else:
                            self.budget.give(taken - len(data))
                            return data
                        waiting()
                        try:
                            await trio.lowlevel.wait_readable(handle.fd)
                        except trio.ClosedResourceError:
                            raise NinePError(errno.EBADF, "fid clunked during read") from None
        finally:
            handle.release()

    async def _write_fifo(self, handle: OpenFile, data: bytes) -> int:
        handle.acquire()
        try:
            with self._may_wait() as waiting:
                while True:
                    try:
                        return handle.write_ready(data)
                    except BlockingIOError:
                        pass
                    waiting()
                    try:
                        await trio.lowlevel.wait_writable(handle.fd)
                    except trio.ClosedResourceError:
                        raise NinePError(errno.EBADF, "fid clunked during write") from None
        finally:
            handle.release()

    async def _read_dir(self, fid: Fid, listing: OpenDir, offset: int, count: int) -> bytes:
        """read(5): a directory read returns whole stat records.  Offset 0 takes
        a fresh listing; any other offset must be a record boundary of it (the
        spec only promises the previous read's end, Linux only ever sends that,
        but seekdir to an earlier boundary costs nothing to honour)."""
        async with fid.lock:
            if offset == 0 or not listing.boundaries:
                listing.records = await self._blocking(
                    self.export.stat_records, fid.parts, self._dialect()
                )
                sizes = (len(record) for record in listing.records)
                listing.boundaries = list(itertools.accumulate(sizes, initial=0))
            index = bisect.bisect_left(listing.boundaries, offset)
            if index >= len(listing.boundaries) or listing.boundaries[index] != offset:
                raise NinePError(errno.EINVAL, "bad offset in directory read")
            taken = await self.budget.take(count)
            out = bytearray()
            while index < len(listing.records) and len(out) + len(listing.records[index]) <= count:
                out += listing.records[index]
                index += 1
            top_up = listing.top_up == (offset, count)
            listing.top_up = (offset + len(out), count - len(out)) if out else (-1, 0)
            self.budget.give(taken - len(out))
        if not out and index < len(listing.records) and not top_up:
            # Linux fills its buffer with follow-up reads of whatever count the
            # last one left, and takes an empty one as "come back at this
            # offset"; any other read that cannot hold the next record would
            # end the listing silently.
            raise NinePError(errno.EMSGSIZE, "directory entry larger than the read count")
        return bytes(out)

    async def readdir(self, msg: codec.Treaddir) -> Message:
        fid = self._fid(msg.fid)
        listing = fid.handle
        if not isinstance(listing, OpenDir):
            raise NinePError(errno.ENOTDIR if listing is not None else errno.EBADF)
        async with fid.lock:
            if msg.offset == 0 or not listing.dirents:
                listing.dirents = await self._blocking(self.export.dirents, fid.parts)
            count = min(msg.count, self.iounit())
            taken = await self.budget.take(count)
            out = bytearray()
            rest = listing.dirents[min(msg.offset, len(listing.dirents)) :]
            for entry in rest:
                record = codec.encode_dirent(entry)
                if len(out) + len(record) > count:
                    break
                out += record
            self.budget.give(taken - len(out))
        if not out and rest:
            raise NinePError(errno.EMSGSIZE, "directory entry larger than the read count")
        return codec.Rreaddir(tag=msg.tag, data=bytes(out))

    async def write(self, msg: codec.Twrite) -> Message:
        fid = self._fid(msg.fid)
        handle = fid.handle
        if not isinstance(handle, OpenFile) or not handle.writable:
            raise NinePError(errno.EBADF, "fid not open for writing")
        if handle.pollable:
            count = await self._write_fifo(handle, msg.data)
        else:
            async with self.shared.pool.slot(self.threads) as slot:
                handle.acquire()  # released when the thread returns
                count = await slot.run(
                    partial(handle.write, msg.offset, msg.data),
                    finished=lambda _: handle.release(),
                )
        return codec.Rwrite(tag=msg.tag, count=count)

    # ------------------------------------------------------- clunk/remove

    async def clunk(self, msg: codec.Tclunk) -> Message:
        self._fid(msg.fid)
        self._close(self.fids.pop(msg.fid))
        return codec.Rclunk(tag=msg.tag)

    async def remove(self, msg: codec.Tremove) -> Message:
        # remove(5): the fid is clunked even when the remove fails.
        await self.clunk(codec.Tclunk(tag=msg.tag, fid=msg.fid))
        raise denied()

    # ------------------------------------------------------- attributes

    async def stat(self, msg: codec.Tstat) -> Message:
        fid = self._fid(msg.fid)
        record = await self._blocking(self.export.stat, fid.parts, self._dialect())
        return codec.Rstat(tag=msg.tag, stat=record)

    async def wstat(self, msg: codec.Twstat) -> Message:
        """Only two wstats do anything here: the all-"don't touch" one, which
        stat(5) defines as a sync, and (with --allow-control) a change of
        length alone, which is how a truncating open arrives."""
        fid = self._fid(msg.fid)
        s = msg.stat
        keeps_metadata = (
            s.type == 0xFFFF
            and s.dev == 0xFFFFFFFF
            and s.mode == 0xFFFFFFFF
            and s.name == ""
            and s.uid == ""
            and s.gid == ""
        )
        keeps_times = s.atime == 0xFFFFFFFF and s.mtime == 0xFFFFFFFF
        keeps_length = s.length == 0xFFFFFFFFFFFFFFFF
        if keeps_metadata and keeps_times and keeps_length:
            return codec.Rwstat(tag=msg.tag)
        if not keeps_metadata or keeps_length:
            raise denied()
        await self._blocking(self.export.truncate, fid.parts, s.length)
        return codec.Rwstat(tag=msg.tag)

    async def getattr(self, msg: codec.Tgetattr) -> Message:
        fid = self._fid(msg.fid)
        return await self._blocking(self.export.getattr, fid.parts, msg.tag)

    async def setattr(self, msg: codec.Tsetattr) -> Message:
        """Like wstat: only a size change gets through, and only with
        --allow-control; time updates that come with it are ignored."""
        fid = self._fid(msg.fid)
        ownership = codec.SETATTR_MODE | codec.SETATTR_UID | codec.SETATTR_GID
        if msg.valid & ownership or not msg.valid & codec.SETATTR_SIZE:
            raise denied()
        await self._blocking(self.export.truncate, fid.parts, msg.size)
        return codec.Rsetattr(tag=msg.tag)

    async def statfs(self, msg: codec.Tstatfs) -> Message:
        fid = self._fid(msg.fid)
        return await self._blocking(self.export.statfs, fid.parts, msg.tag)

    async def readlink(self, msg: codec.Treadlink) -> Message:
        fid = self._fid(msg.fid)
        target = await self._blocking(self.export.readlink, fid.parts)
        return codec.Rreadlink(tag=msg.tag, target=target)

    async def refuse_xattr(self, msg: Message) -> Message:
        raise NinePError(errno.EOPNOTSUPP)

    async def fsync(self, msg: codec.Tfsync) -> Message:
        self._fid(msg.fid)
        return codec.Rfsync(tag=msg.tag)

    async def lock(self, msg: codec.Tlock) -> Message:
        """Locks are granted and not kept: nothing here writes, so nothing to guard."""
        self._fid(msg.fid)
        return codec.Rlock(tag=msg.tag, status=0)

    async def getlock(self, msg: codec.Tgetlock) -> Message:
        self._fid(msg.fid)
        return codec.Rgetlock(
            tag=msg.tag,
            type=2,  # F_UNLCK: no conflicting lock
            start=msg.start,
            length=msg.length,
            proc_id=msg.proc_id,
            client_id=msg.client_id,
        )


def _brief(msg: Message) -> str:
    text = repr(msg)
    return text if len(text) <= 200 else text[:197] + "..."


async def _accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept until cancelled.  Out of descriptors, wait (longer each time, up
    to a second) and say so at most once a minute, instead of spinning."""
    pause = _ACCEPT_BACKOFF[0]
    warned_at = -math.inf
    async with listener:
        while True:
            try:
                sock, _ = await listener.socket.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
                    continue
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                if trio.current_time() - warned_at >= 60:
                    warned_at = trio.current_time()
                    log.warning(
                        "cannot accept connections (%s); retrying until descriptors free up",
                        os.strerror(exc.errno or 0),
                    )
                await trio.sleep(pause)
                pause = min(pause * 2, _ACCEPT_BACKOFF[1])
                continue
            pause = _ACCEPT_BACKOFF[0]
            nursery.start_soon(handle, trio.SocketStream(sock))


async def serve(
    export: Export,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every listener until cancelled; cancellation closes every connection."""
    counter = itertools.count(1)
    shared = Shared(ThreadPool(), FdBudget(), ByteBudget(REPLY_BYTES))

    async def handle(stream: trio.SocketStream) -> None:
        peer = f"conn{next(counter)}"
        with contextlib.suppress(OSError):
            peer += f"[{stream.socket.getpeername()}]"
        log.debug("%s: connected", peer)
        shared.fds.connections += 1
        try:
            await Connection(export, stream, peer, shared).run()
        except Exception:
            # One connection's bug must not end the others.
            log.exception("%s: connection failed", peer)
        finally:
            shared.fds.connections -= 1

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, nursery, handle)
        task_status.started()
