"""One client connection: reading frames, the tag table, flush, and writing
replies in order, within the connection's limits.

One task reads frames, one writes replies in the order they were queued, and
every request other than Tversion and Tflush runs in a task of its own (its
handler in handlers/, its blocking calls in worker threads: resources.py says
how those are shared), so a slow request holds up neither its neighbours on
the same connection nor other clients.

A request is outstanding from the moment its frame is read until its reply has
been written to the socket.  At MAX_OUTSTANDING the connection is no longer
read: a client that does not read its replies stops being served instead of
making the shim buffer them (backpressure, not buffering).

Handlers change state only after their last checkpoint, and a reply is queued
without one (session.py), so a flushed request has either had no effect or
its reply is already queued ahead of the Rflush, as flush(5) requires.
"""

from __future__ import annotations

import errno
import logging
import math
import struct
from dataclasses import dataclass, field

import trio

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Message
from dockerfs_fuse.ninep.export import Export, NinePError
from dockerfs_fuse.ninep.handlers import fids, handler_for
from dockerfs_fuse.ninep.resources import Shared
from dockerfs_fuse.ninep.session import MAX_MSIZE, Session

log = logging.getLogger("dockerfs_fuse.ninep")

MAX_OUTSTANDING = 256  # per connection, from frame read to reply written
LINGER = 30.0  # seconds a half-closed connection waits for replies still to come
_RECEIVE_SIZE = 65536  # bytes asked of the socket per read
_WRITE_BATCH = 64 * 1024  # small replies are joined up to this size per send
_BRIEF = 200  # characters of a message that a debug line shows


@dataclass(slots=True)
class Pending:
    """An outstanding request.  `flushed` means its answer must never be sent."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    flushed: bool = False


class ConnectionClosed(Exception):
    """The client broke the protocol badly enough that the connection ends."""


def _held_bytes(reply: Message) -> int:
    """Read data was taken from the byte budget by the handler that read it;
    the writer gives it back once the reply is on the wire."""
    if isinstance(reply, codec.Rread | codec.Rreaddir):
        return len(reply.data)
    return 0


def _brief(msg: Message) -> str:
    text = repr(msg)
    return text if len(text) <= _BRIEF else text[: _BRIEF - 3] + "..."


class Connection:
    """One client: its outstanding tags, its reply queue, and its session."""

    def __init__(self, export: Export, stream: trio.abc.Stream, peer: str, shared: Shared) -> None:
        self.stream = stream
        self.peer = peer
        self.pending: dict[int, Pending] = {}
        self.outstanding = trio.Semaphore(MAX_OUTSTANDING, max_value=MAX_OUTSTANDING)
        self._settled = trio.lowlevel.ParkingLot()
        self.session = Session(export, shared, on_wait=self._settled.unpark_all)
        self.splitter = codec.FrameSplitter(MAX_MSIZE)
        self._replies, self._to_write = trio.open_memory_channel[tuple[bytes, int]](math.inf)

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
            self.session.clunk_all()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            log.debug("%s: disconnected", self.peer)

    # ---------------------------------------------------------------- reading

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
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
        session = self.session
        try:
            msg = codec.decode(frame, session.dialect or Dialect.P2000)
        except codec.DecodeError as exc:
            if exc.tag is None or exc.tag in self.pending:
                raise ConnectionClosed(str(exc)) from exc
            await self._take_slot()
            self._queue_reply(session.error_reply(exc.tag, NinePError(errno.EINVAL, str(exc))))
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
            # A new session: everything outstanding is aborted first.
            self._abort_all()
            reply, dialect = fids.version(session, msg)
            self.splitter.max_size = session.msize
            self._queue_reply(reply, dialect)
        elif session.dialect is None or type(msg) not in codec.REQUESTS[session.dialect]:
            reason = "version not negotiated" if session.dialect is None else "unexpected message"
            self._queue_reply(session.error_reply(msg.tag, NinePError(errno.EOPNOTSUPP, reason)))
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

    # ---------------------------------------------------------------- serving

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
        session = self.session
        try:
            return await handler_for(msg)(session, msg)
        except NinePError as exc:
            return session.error_reply(msg.tag, exc)
        except OSError as exc:
            return session.error_reply(msg.tag, NinePError.from_os(exc))
        except Exception:
            log.exception("%s: %s failed", self.peer, type(msg).__name__)
            return session.error_reply(msg.tag, NinePError(errno.EIO))

    def _flush(self, oldtag: int) -> None:
        pending = self.pending.pop(oldtag, None)
        if pending is not None:
            pending.flushed = True
            pending.scope.cancel()

    def _abort_all(self) -> None:
        for tag in list(self.pending):
            self._flush(tag)

    # ---------------------------------------------------------------- writing

    def _queue_reply(self, reply: Message, dialect: Dialect | None = None) -> None:
        """Queue a reply for the writer; never blocks, so nothing can run
        between a handler's state change and its reply taking its place in
        line.  The queue is bounded by the outstanding slots."""
        held = _held_bytes(reply)
        frame = self._encode(reply, dialect or self.session.dialect or Dialect.P2000)
        try:
            self._replies.send_nowait((frame, held))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._written(held)  # the connection is closing

    def _encode(self, reply: Message, dialect: Dialect) -> bytes:
        session = self.session
        try:
            frame = codec.encode(reply, dialect)
        except (ValueError, OverflowError, struct.error):
            log.exception("%s: cannot encode %s", self.peer, _brief(reply))
            frame = codec.encode(session.error_reply(reply.tag, NinePError(errno.EIO)), dialect)
        if len(frame) > session.msize:  # e.g. a long link target under a tiny msize
            err = NinePError(errno.EMSGSIZE, "reply does not fit in msize")
            frame = codec.encode(session.error_reply(reply.tag, err), dialect)
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
            self.session.budget.give(held)
        self.outstanding.release()
        self._settled.unpark_all()

    async def _wait_settled(self) -> None:
        """After end of file (within LINGER): until every reply in flight is
        written, except those of FIFO reads and writes still waiting.  A
        half-close cannot be told from a hang-up, and a client that is gone
        must not keep a FIFO read waiting until data comes."""
        while MAX_OUTSTANDING - self.outstanding.value > self.session.waiting:
            await self._settled.park()
