"""The 9P server: trio listeners, one task per connection, one task per request.

A connection owns its fid table and its outstanding tags.  Tversion and Tflush
are handled in the reading task itself, in arrival order, because they change
what later requests mean; every other request runs in its own task, with file
I/O pushed to threads, so a slow read holds up neither its neighbours on the
same connection nor other clients.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import itertools
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from . import codec
from .codec import Dialect, Message, Qid
from .export import Export, NinePError, OpenDir, OpenFile, Parts, denied

log = logging.getLogger("dockerfs_fuse.ninep")

MAX_MSIZE = 256 * 1024
MIN_MSIZE = 256
MAX_OUTSTANDING = 1024  # requests of one connection in flight; beyond it reading pauses
IO_THREADS = 64  # threads for file reads/writes, apart from trio's default pool
_T = TypeVar("_T")

# 9P2000.L open flags (Linux generic values, as the kernel puts them on the wire).
_L_ACCMODE = 0o3
_L_TRUNC = 0o1000


@dataclass
class Fid:
    """What a client's fid points at, and its open state once opened."""

    parts: Parts
    qid: Qid
    handle: OpenFile | OpenDir | None = None
    dir_lock: trio.Lock = field(default_factory=trio.Lock)

    def close(self) -> None:
        if isinstance(self.handle, OpenFile):
            self.handle.close()
        self.handle = None


@dataclass
class Pending:
    """An outstanding request.  `flushed` means its answer must never be sent."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    flushed: bool = False


class ConnectionClosed(Exception):
    """The client broke the protocol badly enough that the connection ends."""


_io_limiter: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("io_limiter")


async def in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """Run blocking metadata calls (walk, stat, listings) off the event loop."""
    return await trio.to_thread.run_sync(fn, *args)


def io_limiter() -> trio.CapacityLimiter:
    """File reads may block for as long as the file likes (a FIFO, a log that
    follows); they get their own thread pool so that they can never starve
    the walks and stats of everyone else."""
    try:
        return _io_limiter.get()
    except LookupError:
        limiter = trio.CapacityLimiter(IO_THREADS)
        _io_limiter.set(limiter)
        return limiter


def version_reply(requested: str) -> tuple[Dialect | None, str]:
    """The dialect to speak for a client's version string, per version(5)."""
    for dialect in (Dialect.L, Dialect.U):
        if requested == dialect.value:
            return dialect, dialect.value
    if requested.startswith("9P2000"):
        return Dialect.P2000, Dialect.P2000.value
    return None, "unknown"


class Connection:
    """One client: its dialect, msize, fids and outstanding tags."""

    def __init__(self, export: Export, stream: trio.abc.Stream, peer: str) -> None:
        self.export = export
        self.whole_export = export  # what an empty attach name gets
        self.stream = stream
        self.peer = peer
        self.dialect: Dialect | None = None
        self.msize = MAX_MSIZE
        self.fids: dict[int, Fid] = {}
        self.pending: dict[int, Pending] = {}
        self.send_lock = trio.Lock()
        self.backlog = trio.Semaphore(MAX_OUTSTANDING)
        self.splitter = codec.FrameSplitter(MAX_MSIZE)
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
                try:
                    await self._read_loop(nursery)
                except ConnectionClosed as exc:
                    log.warning("%s: closing connection: %s", self.peer, exc)
                finally:
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as group:
            log.debug("%s: connection lost: %s", self.peer, group.exceptions[0])
        finally:
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
        """Decode one frame and either answer it here or start its task."""
        try:
            msg = codec.decode(frame, self.dialect or Dialect.P2000)
        except codec.DecodeError as exc:
            if exc.tag is None or exc.tag in self.pending:
                raise ConnectionClosed(str(exc)) from exc
            await self.send(self.error_reply(exc.tag, NinePError(errno.EINVAL, str(exc))))
            return
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s <- %s", self.peer, _brief(msg))
        if msg.tag in self.pending:
            raise ConnectionClosed(f"tag {msg.tag} reused while outstanding")
        if isinstance(msg, codec.Tversion):
            await self.send(self.version(msg))
        elif isinstance(msg, codec.Tflush):
            await self.send(self.flush(msg))
        elif self.dialect is None or type(msg) not in codec.REQUESTS[self.dialect]:
            reason = "version not negotiated" if self.dialect is None else "unexpected message"
            await self.send(self.error_reply(msg.tag, NinePError(errno.EOPNOTSUPP, reason)))
        else:
            await self.backlog.acquire()
            pending = Pending()
            self.pending[msg.tag] = pending
            nursery.start_soon(self._serve, msg, pending)

    async def _serve(self, msg: Message, pending: Pending) -> None:
        """Tasks are cheap and threads are bounded by the limiters, so every
        request starts at once; the backlog only stops a client that never
        reads its replies from piling up tasks without end."""
        try:
            if pending.flushed:  # flushed, or a Tversion came, before we started
                return
            with pending.scope:
                reply = await self._answer(msg)
        finally:
            self.backlog.release()
        if pending.flushed or pending.scope.cancelled_caught:
            return
        if self.pending.get(msg.tag) is pending:
            del self.pending[msg.tag]
        await self.send(reply)

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

    async def send(self, reply: Message) -> None:
        try:
            frame = codec.encode(reply, self.dialect or Dialect.P2000)
        except (ValueError, OverflowError, struct.error):
            log.exception("%s: cannot encode %s", self.peer, _brief(reply))
            frame = codec.encode(
                self.error_reply(reply.tag, NinePError(errno.EIO)), self.dialect or Dialect.P2000
            )
        if len(frame) > self.msize:  # e.g. a long link target under a tiny msize
            err = NinePError(errno.EMSGSIZE, "reply does not fit in msize")
            frame = codec.encode(self.error_reply(reply.tag, err), self.dialect or Dialect.P2000)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s -> %s", self.peer, _brief(reply))
        async with self.send_lock:
            await self.stream.send_all(frame)

    def error_reply(self, tag: int, err: NinePError) -> Message:
        if self.dialect is Dialect.L:
            return codec.Rlerror(tag=tag, ecode=err.errno)
        return codec.Rerror(tag=tag, ename=err.ename, errno=err.errno)

    def _clunk_all(self) -> None:
        for fid in self.fids.values():
            fid.close()
        self.fids.clear()

    def _abort_all(self) -> None:
        for pending in self.pending.values():
            pending.flushed = True
            pending.scope.cancel()
        self.pending.clear()

    # --------------------------------------------------- session messages

    def version(self, msg: codec.Tversion) -> Message:
        """Tversion starts a new session: everything outstanding is aborted and
        every fid clunked, whatever the outcome."""
        self._abort_all()
        self._clunk_all()
        if msg.msize < MIN_MSIZE:
            self.dialect = None
            return codec.Rerror(tag=msg.tag, ename="msize too small", errno=errno.EINVAL)
        self.dialect, name = version_reply(msg.version)
        self.msize = min(msg.msize, MAX_MSIZE)
        self.splitter.max_size = self.msize
        return codec.Rversion(tag=msg.tag, msize=self.msize, version=name)

    def flush(self, msg: codec.Tflush) -> Message:
        """Answered at once; the old request's reply, if still to come, is dropped."""
        pending = self.pending.pop(msg.oldtag, None)
        if pending is not None:
            pending.flushed = True
            pending.scope.cancel()
        return codec.Rflush(tag=msg.tag)

    async def auth(self, msg: codec.Tauth) -> Message:
        # ENOENT is what diod's client library reads as "auth not required".
        raise NinePError(errno.ENOENT, "no authentication required")

    async def attach(self, msg: codec.Tattach) -> Message:
        if msg.afid != codec.NOFID:
            raise NinePError(errno.EINVAL, "no authentication required")
        if msg.fid in self.fids or msg.fid == codec.NOFID:
            raise NinePError(errno.EBADF, "fid already in use")
        dialect = self._dialect()
        # The attach name selects a directory of the export: one per connection.
        export = await in_thread(self.whole_export.subtree, msg.aname)
        if self.fids and export.root != self.export.root:
            raise NinePError(errno.EINVAL, "one attach name per connection")
        self.export = export
        parts, info = await in_thread(self.export.view, (), dialect)
        qid = self.export.qid(info)
        await trio.lowlevel.checkpoint_if_cancelled()
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
        if msg.newfid != msg.fid and msg.newfid in self.fids:
            raise NinePError(errno.EBADF, "fid already in use")
        if len(msg.wnames) > codec.MAXWELEM:
            raise NinePError(errno.EINVAL, "too many names in walk")
        if not msg.wnames:
            self.fids[msg.newfid] = Fid(fid.parts, fid.qid)
            return codec.Rwalk(tag=msg.tag, qids=())
        steps = await in_thread(self.export.walk, fid.parts, msg.wnames, self._dialect())
        await trio.lowlevel.checkpoint_if_cancelled()
        if len(steps) == len(msg.wnames):
            if msg.newfid != msg.fid and msg.newfid in self.fids:
                raise NinePError(errno.EBADF, "fid already in use")
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
        fid = self._fid(number)
        if fid.handle is not None:
            raise NinePError(errno.EBADF, "fid already open")
        handle = await in_thread(
            self.export.open, fid.parts, self._dialect(), read, write, truncate
        )
        if self.fids.get(number) is not fid or fid.handle is not None:
            if isinstance(handle, OpenFile):
                handle.close()
            raise NinePError(errno.EBADF, "fid changed during open")
        fid.handle = handle
        return fid.qid

    def iounit(self) -> int:
        return self.msize - codec.IOHDRSZ

    # ---------------------------------------------------------- read/write

    async def read(self, msg: codec.Tread) -> Message:
        fid = self._fid(msg.fid)
        count = min(msg.count, self.iounit())
        if isinstance(fid.handle, OpenDir):
            async with fid.dir_lock:
                data = await self._read_dir(fid, fid.handle, msg.offset, count)
        elif isinstance(fid.handle, OpenFile):
            data = await self._use(fid.handle, fid.handle.read, msg.offset, count)
        else:
            raise NinePError(errno.EBADF, "fid not open")
        return codec.Rread(tag=msg.tag, data=data)

    async def _use(self, handle: OpenFile, fn: Callable[..., _T], *args: Any) -> _T:
        """File I/O may block indefinitely (a FIFO, a FUSE file waiting on Docker),
        so a flush or shutdown abandons the thread; the thread itself releases
        the handle when it finally returns."""

        def call() -> _T:
            try:
                return fn(*args)
            finally:
                handle.release()

        handle.acquire()
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True, limiter=io_limiter())

    async def _read_dir(self, fid: Fid, listing: OpenDir, offset: int, count: int) -> bytes:
        """read(5): a directory read returns whole stat records.  Offset 0 takes
        a fresh listing; any other offset must be a record boundary of it (the
        spec only promises the previous read's end, Linux only ever sends that,
        but seekdir to an earlier boundary costs nothing to honour)."""
        if offset == 0 or not listing.boundaries:
            listing.records = await in_thread(self.export.stat_records, fid.parts, self._dialect())
            sizes = (len(record) for record in listing.records)
            listing.boundaries = list(itertools.accumulate(sizes, initial=0))
        index = bisect.bisect_left(listing.boundaries, offset)
        if index >= len(listing.boundaries) or listing.boundaries[index] != offset:
            raise NinePError(errno.EINVAL, "bad offset in directory read")
        out = bytearray()
        while index < len(listing.records) and len(out) + len(listing.records[index]) <= count:
            out += listing.records[index]
            index += 1
        # A record that does not fit gives an empty read, not an error: Linux
        # fills its buffer with follow-up reads of whatever count is left and
        # takes an empty one as "come back later at this offset".
        return bytes(out)

    async def readdir(self, msg: codec.Treaddir) -> Message:
        fid = self._fid(msg.fid)
        listing = fid.handle
        if not isinstance(listing, OpenDir):
            raise NinePError(errno.ENOTDIR if listing is not None else errno.EBADF)
        async with fid.dir_lock:
            if msg.offset == 0 or not listing.dirents:
                listing.dirents = await in_thread(self.export.dirents, fid.parts)
            count = min(msg.count, self.iounit())
            out = bytearray()
            for entry in listing.dirents[min(msg.offset, len(listing.dirents)) :]:
                record = codec.encode_dirent(entry)
                if len(out) + len(record) > count:
                    break
                out += record
        return codec.Rreaddir(tag=msg.tag, data=bytes(out))

    async def write(self, msg: codec.Twrite) -> Message:
        fid = self._fid(msg.fid)
        handle = fid.handle
        if not isinstance(handle, OpenFile) or not handle.writable:
            raise NinePError(errno.EBADF, "fid not open for writing")
        count = await self._use(handle, handle.write, msg.offset, msg.data)
        return codec.Rwrite(tag=msg.tag, count=count)

    # ------------------------------------------------------- clunk/remove

    async def clunk(self, msg: codec.Tclunk) -> Message:
        self._fid(msg.fid)
        self.fids.pop(msg.fid).close()
        return codec.Rclunk(tag=msg.tag)

    async def remove(self, msg: codec.Tremove) -> Message:
        # remove(5): the fid is clunked even when the remove fails.
        await self.clunk(codec.Tclunk(tag=msg.tag, fid=msg.fid))
        raise denied()

    # ------------------------------------------------------- attributes

    async def stat(self, msg: codec.Tstat) -> Message:
        fid = self._fid(msg.fid)
        record = await in_thread(self.export.stat, fid.parts, self._dialect())
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
        await in_thread(self.export.truncate, fid.parts, s.length)
        return codec.Rwstat(tag=msg.tag)

    async def getattr(self, msg: codec.Tgetattr) -> Message:
        fid = self._fid(msg.fid)
        return await in_thread(self.export.getattr, fid.parts, msg.tag)

    async def setattr(self, msg: codec.Tsetattr) -> Message:
        """Like wstat: only a size change gets through, and only with
        --allow-control; time updates that come with it are ignored."""
        fid = self._fid(msg.fid)
        ownership = codec.SETATTR_MODE | codec.SETATTR_UID | codec.SETATTR_GID
        if msg.valid & ownership or not msg.valid & codec.SETATTR_SIZE:
            raise denied()
        await in_thread(self.export.truncate, fid.parts, msg.size)
        return codec.Rsetattr(tag=msg.tag)

    async def statfs(self, msg: codec.Tstatfs) -> Message:
        fid = self._fid(msg.fid)
        return await in_thread(self.export.statfs, fid.parts, msg.tag)

    async def readlink(self, msg: codec.Treadlink) -> Message:
        fid = self._fid(msg.fid)
        target = await in_thread(self.export.readlink, fid.parts)
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


async def serve(
    export: Export,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every listener until cancelled; cancellation closes every connection."""
    counter = itertools.count(1)

    async def handle(stream: trio.SocketStream) -> None:
        peer = f"conn{next(counter)}"
        with contextlib.suppress(OSError):
            peer += f"[{stream.socket.getpeername()}]"
        log.debug("%s: connected", peer)
        try:
            await Connection(export, stream, peer).run()
        except Exception:
            # One connection's bug must not end the others.
            log.exception("%s: connection failed", peer)

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
        task_status.started()
