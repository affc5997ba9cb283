"""Exec sessions: what runs, what it wrote, how it ended, and who still holds it.

One `Session` per reserved `clone`: it runs one command through its
engine's `ExecBackend` (docker/exec.py, or a fake in the tests), holds what
the command wrote until it is read (bounded, per stream), and knows its exit.
The stream from Docker is read only when a reader (or `wait`) asks and only
while the other stream's buffer has room, so a reader that stops reading
stops the command, as a pipe does. `ExecSessions` bounds how many exist, per
container and per mount, and ends a session when its last file is closed.
"""

from __future__ import annotations

import collections
import errno
import logging
import re
import secrets
from collections.abc import Callable
from typing import Protocol

import trio

from dockerfs_fuse.docker.errors import DockerProblem, NotFound
from dockerfs_fuse.docker.exec import DockerExec, ExecState
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.exec import ExecSpec, State, status_text

log = logging.getLogger(__name__)

# Sessions of one container, and of the whole mount.
MAX_PER_CONTAINER = 64
MAX_SESSIONS = 128
# What one stream holds unread before the stream from Docker is left unread.
MAX_BUFFER = 256 << 10
# How often a starting exec, or one whose stream ended, is asked how it is:
# at first, and (a starting one) at most.
POLL = 0.005
POLL_MAX = 0.025
# How often `wait` asks Docker while both buffers are full and nobody reads.
WAIT_POLL = 0.2
# How long an exec may take to start, and to say how it ended after its stream did.
SETTLE = 10.0
# Docker's exit codes for a command it could not start: not found, not executable.
_NOT_FOUND, _NOT_EXECUTABLE = 127, 126
_MISSING = re.compile(r"not found|no such file or directory", re.IGNORECASE)
# How much of Docker's message about a command that could not start is kept.
_MESSAGE_BYTES = 4096


class SessionError(Exception):
    """A refusal of ours, with its errno."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.errno = code


class ExecChannel(Protocol):
    async def read(self) -> list[tuple[int, bytes]] | None:
        """What the command wrote since ((1 or 2, bytes), ...); None at the end.
        Cancelling it loses nothing: the next call returns what it would have."""

    async def write(self, data: bytes) -> None: ...

    async def close_write(self) -> bool: ...

    def close(self) -> None: ...


class ExecBackend(Protocol):
    async def create(self, cid: str, spec: ExecSpec, mark: str) -> str: ...

    async def start(self, exec_id: str, tty: bool) -> ExecChannel: ...

    async def inspect(self, exec_id: str) -> ExecState: ...

    async def signal(self, cid: str, pid: int, mark: str, name: str) -> None: ...


class Session:
    """One exec session: reserved, then one command's run and end."""

    def __init__(self, number: int, key: tuple[str, str], backend: ExecBackend) -> None:
        self.number = number
        self.key = key  # (engine name, container ID)
        self.backend = backend
        self.state = State.RESERVED
        self.spec: ExecSpec | None = None
        self.mark = secrets.token_hex(12)
        self.exec_id = ""
        self.pid = 0
        self.code: int | None = None
        self.killonclose = False
        self.opens = 0
        self.ctl_opens = 0
        self.channel: ExecChannel | None = None
        # What the command wrote and nobody has read yet, per stream, as it came.
        self.bufs: dict[int, collections.deque[bytes]] = {
            1: collections.deque(),
            2: collections.deque(),
        }
        self.sizes = {1: 0, 2: 0}
        self._taken = {1: 0, 2: 0}  # how much of each stream's first chunk was read
        self.ended = False  # the stream from Docker ended
        self.stdin_closed = False
        self._pulling = False
        self._changed = trio.Event()

    @property
    def cid(self) -> str:
        return self.key[1]

    def status(self) -> bytes:
        return status_text(self.state, self.pid, self.code)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    # -- running -------------------------------------------------------------------

    async def start(self, spec: ExecSpec) -> None:
        """Run the command; returns once it runs (or has run). A command Docker
        could not start is NotFound (127) or SessionError(EACCES) (126)."""
        if self.state is not State.RESERVED:
            raise SessionError(errno.EBUSY, "this session has run its command")
        self.state = State.STARTING
        self.spec = spec
        self._notify()
        try:
            self.exec_id = await self.backend.create(self.cid, spec, self.mark)
            self.channel = await self.backend.start(self.exec_id, spec.tty)
            await self._settle()
        except BaseException:
            self._end_stream()
            self.state = State.EXITED
            self._notify()
            raise
        self._notify()

    async def _settle(self) -> None:
        """Wait until Docker says the command runs or has ended.

        Docker's answer to the start comes before the command runs, and
        nothing says when it does: Docker is asked when the stream first
        moves (output, or its end: a command as short as `true` is then
        known by one ask), else at growing intervals from POLL to POLL_MAX."""
        moved = trio.Event()

        async def pull_once() -> None:
            await self._pull()
            moved.set()

        code: int | None = None
        with trio.fail_after(SETTLE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pull_once)
                delay, asked_since_moved = POLL, False
                while True:
                    if asked_since_moved:
                        await trio.sleep(delay)
                    else:
                        with trio.move_on_after(delay):
                            await moved.wait()
                        asked_since_moved = moved.is_set()
                    delay = min(delay * 2, POLL_MAX)
                    st = await self.backend.inspect(self.exec_id)
                    if (st.running and st.pid > 0) or st.exit_code is not None:
                        break
                nursery.cancel_scope.cancel()
            if st.pid == 0 and st.exit_code in (_NOT_FOUND, _NOT_EXECUTABLE):
                raise await self._not_started(st.exit_code)
            if not st.running and self.ended:
                code = st.exit_code  # it has run: its stream ended, and Docker says how
        self.state, self.pid = State.RUNNING, st.pid
        if code is not None:
            self._exited(code)

    async def _not_started(self, code: int) -> Exception:
        """Docker's own words for a command it could not start, from its stream."""
        said = bytearray()
        while len(said) < _MESSAGE_BYTES:
            for which in (1, 2):
                while self.sizes[which] and len(said) < _MESSAGE_BYTES:
                    said += self._take(which, _MESSAGE_BYTES)
            if self.ended or self.channel is None or len(said) >= _MESSAGE_BYTES:
                break
            await self._pull()
        message = " ".join(said[:_MESSAGE_BYTES].decode("utf-8", "replace").split())
        message = message or f"the command could not be started (exit code {code})"
        # Docker 20.10 says 126 for a missing executable too: its words decide.
        if code == _NOT_FOUND or _MISSING.search(message):
            return NotFound(message)
        return SessionError(errno.EACCES, message)

    def buffered(self, which: int) -> int:
        return self.sizes[which]

    def _full(self) -> bool:
        return any(size >= MAX_BUFFER for size in self.sizes.values())

    def _take(self, which: int, size: int) -> bytes:
        """Up to `size` buffered bytes of a stream, across the chunks as they came
        (one copy at most: a chunk taken whole and alone is not copied)."""
        chunks = self.bufs[which]
        start = self._taken[which]
        parts: list[bytes | memoryview] = []
        got = 0
        while chunks and got < size:
            chunk = chunks[0]
            rest = len(chunk) - start
            if rest > size - got:
                parts.append(memoryview(chunk)[start : start + size - got])
                start += size - got
                got = size
            else:
                chunks.popleft()
                parts.append(memoryview(chunk)[start:] if start else chunk)
                got += rest
                start = 0
        self._taken[which] = start
        self.sizes[which] -= got
        self._notify()
        if len(parts) == 1 and isinstance(parts[0], bytes):
            return parts[0]
        return b"".join(parts)

    def read_now(self, which: int, size: int) -> bytes | None:
        """What `read` would return without waiting, or None if it would wait."""
        if self.sizes[which]:
            data = self._take(which, size)
            self._pull_ahead()
            return data
        if self.ended or (self.state is State.EXITED and self.channel is None):
            return b""
        return None

    async def read(self, which: int, size: int) -> bytes:
        """Up to `size` bytes of stdout (1) or stderr (2) as they come; b"" at the end."""
        while True:
            data = self.read_now(which, size)
            if data is not None:
                return data
            if self.state in (State.RESERVED, State.STARTING) or self._pulling:
                await self.changed()
            elif self.sizes[3 - which] >= MAX_BUFFER:
                await self.changed()  # the other stream's reader has to catch up
            else:
                await self._pull()

    def _pull_ahead(self) -> None:
        """While a read's bytes go to their reader, take the next from Docker
        (if there is room): Docker writes on meanwhile instead of waiting for
        the reader's next request."""
        if self._pulling or self.ended or self.channel is None or self._full():
            return
        if self.state is not State.RUNNING:
            return
        self._pulling = True
        trio.lowlevel.spawn_system_task(self._pull_quietly)

    async def _pull_quietly(self) -> None:
        if self.channel is None:  # the session ended before this began
            self._pulling = False
            return
        try:
            await self._pull(ahead=True)
        except Exception:
            log.exception("exec %s/%d: reading ahead", self.cid[:12], self.number)

    async def _pull(self, ahead: bool = False) -> None:
        """Take what Docker sent next into the buffers (one puller at a time)."""
        assert self.channel is not None and self.spec is not None
        assert ahead or not self._pulling
        self._pulling = True
        try:
            items = await self.channel.read()
        except DockerProblem as exc:
            log.warning("exec %s/%d: the stream broke: %s", self.cid[:12], self.number, exc)
            items = None
        finally:
            self._pulling = False
            self._notify()
        if items is None:
            self.ended = True
            return
        for which, data in items:
            stream = 1 if self.spec.merged or which != 2 else 2
            if data:
                self.bufs[stream].append(data)
                self.sizes[stream] += len(data)

    async def write(self, data: bytes) -> int:
        """Into the command's stdin, at the pace it reads (the socket's)."""
        while self.state in (State.RESERVED, State.STARTING):
            await self.changed()
        if self.stdin_closed or self.channel is None or self.ended:
            raise SessionError(errno.EPIPE, "the command's stdin is closed")
        try:
            await self.channel.write(data)
        except DockerProblem as exc:
            raise SessionError(errno.EPIPE, f"the command's stdin is closed: {exc}") from None
        return len(data)

    async def close_stdin(self) -> None:
        if self.state is State.RESERVED:
            raise SessionError(errno.EINVAL, "no command yet")
        if self.stdin_closed or self.channel is None:
            return
        if not await self.channel.close_write():
            raise SessionError(errno.EOPNOTSUPP, "this engine's connection cannot end stdin alone")
        self.stdin_closed = True

    async def wait(self) -> int:
        """Block until the command has ended; its exit code (-1 if Docker says none)."""
        while self.code is None:
            if self.state is State.EXITED:
                return -1
            if self.state in (State.RESERVED, State.STARTING):
                await self.changed()
            elif self.ended:
                await self._learn_exit()
            elif self._pulling:
                await self.changed()  # the puller sees the end
            elif not self._full():
                await self._pull()
            else:
                with trio.move_on_after(WAIT_POLL):
                    await self.changed()
                st = await self.backend.inspect(self.exec_id)
                if not st.running and st.exit_code is not None:
                    self._exited(st.exit_code)
        return self.code

    async def _learn_exit(self) -> None:
        """The stream ended: Docker says how the command did, soon if not at once."""
        with trio.move_on_after(SETTLE):
            while True:
                try:
                    st = await self.backend.inspect(self.exec_id)
                except NotFound:
                    break  # the container went with the exec
                if not st.running and st.exit_code is not None:
                    self._exited(st.exit_code)
                    return
                await trio.sleep(POLL)
        log.warning("exec %s/%d: Docker says no exit code", self.cid[:12], self.number)
        self._exited(None)

    def _exited(self, code: int | None) -> None:
        self.code = code
        self.state = State.EXITED
        self._notify()

    async def kill(self, signal: str) -> None:
        if self.state in (State.RESERVED, State.STARTING):
            raise SessionError(errno.EINVAL, "no command to kill yet")
        if self.state is State.EXITED and self.code is not None:
            return
        if self.ended:
            # Its output has ended: most likely the command too, which one
            # ask tells (cheaper than a signal, which may take a second exec).
            st = await self.backend.inspect(self.exec_id)
            if not st.running and st.exit_code is not None:
                self._exited(st.exit_code)
                return
        await self.backend.signal(self.cid, self.pid, self.mark, signal)

    def _end_stream(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()


class ExecSessions:
    """Every session of the mount, by container; bounded; ended when unheld.

    `on_end(session)` hears of each session that ends (its files go).
    """

    def __init__(
        self,
        on_end: Callable[[Session], None],
        per_container: int = MAX_PER_CONTAINER,
        total: int = MAX_SESSIONS,
    ) -> None:
        self.on_end = on_end
        self.per_container = per_container
        self.total = total
        self.by_container: dict[tuple[str, str], dict[int, Session]] = {}
        self._backends: dict[str, ExecBackend] = {}
        self._next: dict[tuple[str, str], int] = {}
        self.count = 0

    def backend(self, engine: str, source: object) -> ExecBackend | None:
        """The exec calls of an engine (by name) whose source is a DockerSource."""
        backend = self._backends.get(engine)
        if backend is None and isinstance(source, DockerSource):
            backend = self._backends[engine] = DockerExec(source)
        return backend

    def reserve(self, key: tuple[str, str], backend: ExecBackend) -> Session:
        """A new session of container `key` (engine, ID), held by the open that made it."""
        if self.count >= self.total:
            raise SessionError(errno.EMFILE, f"{self.total} exec sessions are open on this mount")
        live = self.by_container.setdefault(key, {})
        if len(live) >= self.per_container:
            raise SessionError(errno.EAGAIN, f"{self.per_container} sessions of this container")
        number = self._next.get(key, 0)
        self._next[key] = number + 1
        session = live[number] = Session(number, key, backend)
        self.count += 1
        return session

    def get(self, key: tuple[str, str], number: int) -> Session | None:
        return self.by_container.get(key, {}).get(number)

    def numbers(self, key: tuple[str, str]) -> list[int]:
        return list(self.by_container.get(key, {}))

    def hold(self, session: Session, ctl: bool) -> None:
        session.opens += 1
        session.ctl_opens += ctl

    def let_go(self, session: Session, ctl: bool) -> None:
        """One of its files closed: the last ctl kills (killonclose); the last file
        ends the session, and kills a command still running (as Docker does when
        the connection of an attached exec closes)."""
        session.opens -= 1
        session.ctl_opens -= ctl
        last_ctl = ctl and session.ctl_opens == 0 and session.killonclose
        if session.opens == 0:
            self._end(session)
        elif last_ctl and session.code is None and session.state is State.RUNNING:
            trio.lowlevel.spawn_system_task(self._kill_quietly, session, False)

    async def _kill_quietly(self, session: Session, then_close: bool) -> None:
        try:
            await session.kill("SIGKILL")
        except Exception as exc:
            log.warning("exec %s/%d: killing it: %s", session.cid[:12], session.number, exc)
        if then_close:
            session._end_stream()

    def _end(self, session: Session) -> None:
        live = self.by_container.get(session.key, {})
        if live.get(session.number) is not session:
            return
        del live[session.number]
        if not live:
            del self.by_container[session.key]
        self.count -= 1
        if session.state is State.RUNNING and session.code is None:
            trio.lowlevel.spawn_system_task(self._kill_quietly, session, True)
        else:
            session._end_stream()
        session._notify()
        self.on_end(session)
