"""Topen, Tlopen, Tread, Treaddir, Twrite: opening files and moving their bytes.

Read data is taken from the connection's byte budget (resources.py) before it
is read, and given back by the connection once its reply is on the wire: a
client that does not read its replies stops its reads instead of making the
shim buffer them.  File reads and writes run in worker threads (they may
block as long as the file likes, a FUSE file waiting on Docker); FIFO reads
and writes wait in trio and hold no thread."""

from __future__ import annotations

import bisect
import errno
import itertools
from functools import partial

import outcome
import trio

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Message, Qid
from dockerfs_fuse.ninep.export import NinePError, OpenDir, OpenFile, denied
from dockerfs_fuse.ninep.session import MAX_OPEN, Fid, Session

# 9P2000.L open flags (Linux generic values, as the kernel puts them on the wire).
_L_ACCMODE = 0o3
_L_TRUNC = 0o1000
_9P_ACCMODE = 3  # the access bits of a Topen mode


# ---------------------------------------------------------------- open


async def open(session: Session, msg: codec.Topen) -> Message:
    access = msg.mode & _9P_ACCMODE
    if msg.mode & codec.ORCLOSE:
        raise denied()
    qid = await _open(
        session,
        msg.fid,
        read=access in (codec.OREAD, codec.ORDWR, codec.OEXEC),
        write=access in (codec.OWRITE, codec.ORDWR),
        truncate=bool(msg.mode & codec.OTRUNC),
    )
    return codec.Ropen(tag=msg.tag, qid=qid, iounit=session.iounit())


async def lopen(session: Session, msg: codec.Tlopen) -> Message:
    access = msg.flags & _L_ACCMODE
    qid = await _open(
        session,
        msg.fid,
        read=access in (0, 2),
        write=access in (1, 2),
        truncate=bool(msg.flags & _L_TRUNC),
    )
    return codec.Rlopen(tag=msg.tag, qid=qid, iounit=session.iounit())


async def _open(session: Session, number: int, read: bool, write: bool, truncate: bool) -> Qid:
    """Counts against this connection's MAX_OPEN and the process's
    descriptors before the open starts; a flushed open that completes
    later is closed again, so it has had no effect."""
    fid = session.fid(number)
    if fid.handle is not None:
        raise NinePError(errno.EBADF, "fid already open")
    if session.open_files >= MAX_OPEN:
        reason = f"too many open files: at most {MAX_OPEN} per connection"
        raise NinePError(errno.EMFILE, reason)
    dialect = session.negotiated()
    fds = session.shared.fds
    fds.take_file()

    def opened(result: outcome.Outcome[OpenFile | OpenDir]) -> None:
        """The descriptor now belongs to the handle (or was never made)."""
        if isinstance(result, outcome.Value) and isinstance(result.value, OpenFile):
            result.value.on_close = fds.give_file
        else:
            fds.give_file()

    session.open_files += 1
    started = False  # from then on, `opened` settles the descriptor
    try:
        async with session.shared.pool.slot(session.threads) as slot:
            started = True
            handle = await slot.run(
                partial(session.export.open, fid.parts, dialect, read, write, truncate),
                finished=opened,
                discard=session.close_handle,
            )
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            if session.fids.get(number) is not fid or fid.handle is not None:
                raise NinePError(errno.EBADF, "fid changed during open")
        except BaseException:
            session.close_handle(handle)
            raise
    except BaseException:
        session.open_files -= 1
        if not started:
            fds.give_file()
        raise
    fid.handle = handle
    return fid.qid


# ---------------------------------------------------------------- read


async def read(session: Session, msg: codec.Tread) -> Message:
    fid = session.fid(msg.fid)
    count = min(msg.count, session.iounit())
    handle = fid.handle
    if isinstance(handle, OpenDir):
        data = await _read_dir(session, fid, handle, msg.offset, count)
    elif isinstance(handle, OpenFile) and handle.pollable:
        data = await _read_fifo(session, fid, handle, count)
    elif isinstance(handle, OpenFile):
        data = await _read_file(session, handle, msg.offset, count)
    else:
        raise NinePError(errno.EBADF, "fid not open")
    return codec.Rread(tag=msg.tag, data=data)


async def _read_file(session: Session, handle: OpenFile, offset: int, count: int) -> bytes:
    """A read in a worker thread: it may block for as long as the file likes
    (a FUSE file waiting on Docker).  A flush abandons the thread, which
    lets go of the handle when it finally returns.

    The count is taken from the byte budget before reading, so a client
    that does not read its replies stops its reads; a read that blocks
    gives it back while it waits (a blocked read holds no data) and takes
    what it got when it returns, still within its connection's slot."""
    budget = session.budget
    taken = await budget.take(count)

    def blocked() -> None:
        nonlocal taken
        budget.give(taken)
        taken = 0

    try:
        async with session.shared.pool.slot(session.threads) as slot:
            handle.acquire()
            data = await slot.run(
                partial(handle.read, offset, count),
                finished=lambda _: handle.release(),
                blocked=blocked,
            )
            if not taken:
                taken = await budget.take(len(data))
    except BaseException:
        budget.give(taken)
        raise
    budget.give(taken - len(data))
    return data


async def _read_fifo(session: Session, fid: Fid, handle: OpenFile, count: int) -> bytes:
    """A FIFO read waits in trio, holding no thread; a flush or a clunk
    ends the wait at once."""
    budget = session.budget
    handle.acquire()
    try:
        with session.may_wait() as waiting:
            if fid.lock.locked():
                waiting()  # behind another read of this FIFO
            async with fid.lock:  # one waiter per descriptor
                while True:
                    taken = await budget.take(count)
                    try:
                        data = handle.read_ready(count)
                    except BlockingIOError:
                        budget.give(taken)
                    except BaseException:
                        budget.give(taken)
                        raise
                    else:
                        budget.give(taken - len(data))
                        return data
                    waiting()
                    try:
                        await trio.lowlevel.wait_readable(handle.fd)
                    except trio.ClosedResourceError:
                        raise NinePError(errno.EBADF, "fid clunked during read") from None
    finally:
        handle.release()


async def _read_dir(session: Session, fid: Fid, listing: OpenDir, offset: int, count: int) -> bytes:
    """read(5): a directory read returns whole stat records.  Offset 0 takes
    a fresh listing; any other offset must be a record boundary of it (the
    spec only promises the previous read's end, Linux only ever sends that,
    but seekdir to an earlier boundary costs nothing to honour)."""
    async with fid.lock:
        if offset == 0 or not listing.boundaries:
            listing.records = await session.blocking(
                session.export.stat_records, fid.parts, session.negotiated()
            )
            sizes = (len(record) for record in listing.records)
            listing.boundaries = list(itertools.accumulate(sizes, initial=0))
        index = bisect.bisect_left(listing.boundaries, offset)
        if index >= len(listing.boundaries) or listing.boundaries[index] != offset:
            raise NinePError(errno.EINVAL, "bad offset in directory read")
        taken = await session.budget.take(count)
        out = bytearray()
        while index < len(listing.records) and len(out) + len(listing.records[index]) <= count:
            out += listing.records[index]
            index += 1
        top_up = listing.top_up == (offset, count)
        listing.top_up = (offset + len(out), count - len(out)) if out else (-1, 0)
        session.budget.give(taken - len(out))
    if not out and index < len(listing.records) and not top_up:
        # Linux fills its buffer with follow-up reads of whatever count the
        # last one left, and takes an empty one as "come back at this
        # offset"; any other read that cannot hold the next record would
        # end the listing silently.
        raise NinePError(errno.EMSGSIZE, "directory entry larger than the read count")
    return bytes(out)


async def readdir(session: Session, msg: codec.Treaddir) -> Message:
    fid = session.fid(msg.fid)
    listing = fid.handle
    if not isinstance(listing, OpenDir):
        raise NinePError(errno.ENOTDIR if listing is not None else errno.EBADF)
    async with fid.lock:
        if msg.offset == 0 or not listing.dirents:
            listing.dirents = await session.blocking(session.export.dirents, fid.parts)
        count = min(msg.count, session.iounit())
        taken = await session.budget.take(count)
        out = bytearray()
        rest = listing.dirents[min(msg.offset, len(listing.dirents)) :]
        for entry in rest:
            record = codec.encode_dirent(entry)
            if len(out) + len(record) > count:
                break
            out += record
        session.budget.give(taken - len(out))
    if not out and rest:
        raise NinePError(errno.EMSGSIZE, "directory entry larger than the read count")
    return codec.Rreaddir(tag=msg.tag, data=bytes(out))


# ---------------------------------------------------------------- write


async def write(session: Session, msg: codec.Twrite) -> Message:
    fid = session.fid(msg.fid)
    handle = fid.handle
    if not isinstance(handle, OpenFile) or not handle.writable:
        raise NinePError(errno.EBADF, "fid not open for writing")
    if handle.pollable:
        count = await _write_fifo(session, handle, msg.data)
    else:
        async with session.shared.pool.slot(session.threads) as slot:
            handle.acquire()  # released when the thread returns
            count = await slot.run(
                partial(handle.write, msg.offset, msg.data),
                finished=lambda _: handle.release(),
            )
    return codec.Rwrite(tag=msg.tag, count=count)


async def _write_fifo(session: Session, handle: OpenFile, data: bytes) -> int:
    handle.acquire()
    try:
        with session.may_wait() as waiting:
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
