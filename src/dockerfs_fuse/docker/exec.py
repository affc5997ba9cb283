"""Docker's exec endpoints, for exec sessions (engine/exec.py).

`POST /containers/{id}/exec` makes an exec, `POST /exec/{id}/start`
(hijacked: the HTTP connection becomes the command's stdin, stdout and
stderr) runs it, `GET /exec/{id}/json` says whether it runs, its PID and
its exit code. Docker has no endpoint to signal an exec: `signal` does it
from this host when the exec's process is ours to see (a local engine),
else with a second exec of `kill` inside the container.

The hijacked connection is read only when a reader asks (`read`), so a
reader that stops reading stops the command (as a pipe does) and nothing
grows. Over a plain unix or TCP socket, aiohttp lets go of it once it is
hijacked and trio reads and writes it itself (`SocketChannel`): a fast
command's output then crosses no thread. Over TLS or ssh, where only
aiohttp's transport can speak, it stays on the asyncio thread
(`ThreadChannel`), parsed as it arrives and left unread past 256 KiB.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal as signals
import socket
from dataclasses import dataclass
from typing import Any, TypeVar

import aiodocker
import aiohttp
import trio
from aiodocker._flow_control_queue import FlowControlDataQueue

from dockerfs_fuse.docker.bridge import AsyncioThread, await_future, call_soon, finished
from dockerfs_fuse.docker.errors import (
    DOCKER_ERRORS,
    ApiError,
    Conflict,
    DockerProblem,
    translate,
)
from dockerfs_fuse.docker.framing import Demuxer, FrameSplitter, Run
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.exec import ExecSpec

T = TypeVar("T")

# How much one read takes at most: one receive from the socket (which holds
# about this much), or what the asyncio thread's queue holds.
READ_BATCH = 256 << 10
# What a ThreadChannel's queue holds before the socket is left unread
# (aiohttp pauses at twice this): with the session's own buffers
# (engine/exec.py), the most the daemon holds per session.
QUEUE_LIMIT = 128 << 10
# Output smaller than this waits up to GATHER_WAIT for more before it is
# handed to its reader: a line typed out still shows at once to the eye.
GATHER_BELOW = 128 << 10
GATHER_WAIT = 0.002
# The variable every exec gets, so its process can be found to be signalled
# (the exec's PID is the host's, which a remote engine's container cannot use).
MARK_VARIABLE = "DOCKERFS_EXEC"
_IMPROPER = re.compile(r"state improper|not running|is paused")
# Finds the marked process among the container's and signals it: $0 the mark, $1 the signal.
_KILL_MARKED = (
    'for d in /proc/[0-9]*; do tr "\\000" "\\n" <"$d/environ" 2>/dev/null'
    ' | grep -qx "$0" && kill -s "$1" "${d#/proc/}"; done'
)


@dataclass(frozen=True)
class ExecState:
    """`GET /exec/{id}/json`, in brief."""

    running: bool
    pid: int
    exit_code: int | None


class SocketChannel:
    """The hijacked connection of one started exec, a plain socket read and
    written from trio: each `read` is what Docker has sent since."""

    def __init__(self, sock: socket.socket, tty: bool, early: bytes) -> None:
        self._raw = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        self.tty = tty
        self._frames = FrameSplitter()
        # Received and not yet handed over (at first: what came with the 101).
        self._held: list[bytes] = [early] if early else []
        self._size = len(early)
        self._writing = trio.Lock()
        self._at_end = False  # the socket said its end (held bytes may remain)

    async def read(self) -> list[Run] | None:
        """What the command wrote since, as (1 stdout | 2 stderr, bytes); None at the end.

        Cancelling it loses nothing: what was received is held for the next
        read. A little output waits up to GATHER_WAIT for more, so a command
        writing faster than it is read yet slower than the socket fills costs
        one request of the reader per GATHER_BELOW, not one per frame."""
        while True:
            if not self._held and not self._at_end:
                await self._receive()
            if self._held and self._size < GATHER_BELOW and not self._at_end:
                await trio.sleep(GATHER_WAIT)
                self._receive_now()
            if not self._held:
                return None
            held, self._held, self._size = self._held, [], 0
            if self.tty:
                return [(1, data) for data in held]
            runs = [run for data in held for run in self._frames.feed(data)]
            if self._frames.broken:
                raise ApiError("exec stream: a frame header past the largest frame")
            if runs:
                return runs

    def _receive_now(self) -> None:
        """Take what has arrived, without waiting."""
        try:
            data = self._raw.recv(READ_BATCH, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as exc:
            data = self._closed_or_raise(exc)
        self._took(data)

    async def _receive(self) -> None:
        try:
            data = await self._sock.recv(READ_BATCH)
        except trio.ClosedResourceError:
            data = b""
        except OSError as exc:
            data = self._closed_or_raise(exc)
        self._took(data)

    def _closed_or_raise(self, exc: OSError) -> bytes:
        """The end if we closed the socket (the session ended), else the error."""
        if self._raw.fileno() == -1:
            return b""
        raise ApiError(f"exec stream: {exc}") from None

    def _took(self, data: bytes) -> None:
        if data:
            self._held.append(data)
            self._size += len(data)
        else:
            self._at_end = True

    async def write(self, data: bytes) -> None:
        """Into the command's stdin; returns once the socket took it all (backpressure)."""
        view = memoryview(data)
        async with self._writing:
            try:
                while view:
                    sent = await self._sock.send(view)
                    view = view[sent:]
            except (OSError, trio.ClosedResourceError) as exc:
                raise ApiError(f"stdin is closed: {exc}") from None

    async def close_write(self) -> bool:
        """End the command's stdin (a half-close, which Docker takes as its end)."""
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise ApiError(f"stdin: {exc}") from None
        return True

    def close(self) -> None:
        """Drop the connection: the command's stdout and stderr are closed."""
        self._sock.close()


class ThreadChannel:
    """The hijacked connection of one started exec over TLS or ssh, which
    only aiohttp's transport can speak: read on the asyncio thread."""

    def __init__(self, thread: AsyncioThread, resp: aiohttp.ClientResponse, tty: bool) -> None:
        self._thread = thread
        self._resp = resp
        self.tty = tty
        self._queue: FlowControlDataQueue[Run] | None = None
        self._pending: concurrent.futures.Future[list[Run] | None] | None = None

    def parse(self) -> None:
        """Parse the stream as it arrives (on the asyncio thread, before any await)."""
        conn = self._resp.connection
        protocol = conn.protocol if conn is not None else None
        if protocol is None:
            return
        self._queue = FlowControlDataQueue(protocol, limit=QUEUE_LIMIT)
        protocol.set_parser(Frames(self._queue, self.tty), self._queue)

    async def read(self) -> list[Run] | None:
        """What the command wrote since, as (1 stdout | 2 stderr, bytes); None at the end.

        A read cancelled in trio (a reader's EINTR) is left running, and the
        next read returns its answer: cancelled there, bytes already taken
        from the stream would be lost."""
        if self._pending is None:
            self._pending = self._thread.submit(self._read())
        pending = self._pending
        await finished(pending)
        self._pending = None
        if pending.cancelled():  # closed
            return None
        return pending.result()

    async def _read(self) -> list[Run] | None:
        queue = self._queue
        if queue is None:
            return None
        out: list[Run] = []
        size = 0
        try:
            while not out or (size < READ_BATCH and queue._buffer):
                run = await queue.read()
                out.append(run)
                size += len(run[1])
        except aiohttp.EofStream:
            pass
        except DOCKER_ERRORS as exc:
            raise translate(exc) from exc
        return out or None

    async def write(self, data: bytes) -> None:
        """Into the command's stdin; returns once the socket took it (backpressure)."""
        await await_future(self._thread.submit(self._write(data)))

    async def _write(self, data: bytes) -> None:
        conn = self._resp.connection
        if conn is None or conn.transport is None or conn.protocol is None:
            raise ApiError("stdin is closed")
        try:
            conn.transport.write(data)
            await conn.protocol._drain_helper()
        except DOCKER_ERRORS as exc:
            raise translate(exc) from exc
        except (RuntimeError, AssertionError) as exc:  # a closed transport
            raise ApiError(f"stdin is closed: {exc}") from None

    async def close_write(self) -> bool:
        """End the command's stdin (a half-close); whether the connection can
        (a TLS or ssh connection cannot: then stdin stays open)."""
        return await await_future(self._thread.submit(self._close_write()))

    async def _close_write(self) -> bool:
        conn = self._resp.connection
        transport = conn.transport if conn is not None else None
        if transport is None or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def close(self) -> None:
        """Drop the connection: the command's stdout and stderr are closed."""
        if self._pending is not None:
            self._pending.cancel()
        call_soon(self._thread.loop, self._resp.close)


class DockerExec:
    """The exec calls of one engine (engine/exec.py's ExecBackend)."""

    def __init__(self, source: DockerSource) -> None:
        self.source = source

    async def create(self, cid: str, spec: ExecSpec, mark: str) -> str:
        return await create(self.source, cid, spec, mark)

    async def start(self, exec_id: str, tty: bool) -> SocketChannel | ThreadChannel:
        return await start(self.source, exec_id, tty)

    async def inspect(self, exec_id: str) -> ExecState:
        return await inspect(self.source, exec_id)

    async def signal(self, cid: str, pid: int, mark: str, name: str) -> None:
        await signal(self.source, cid, pid, mark, name)


async def create(source: DockerSource, cid: str, spec: ExecSpec, mark: str) -> str:
    """`POST /containers/{id}/exec`: the exec's ID (404: no container; 409: not running)."""
    body: dict[str, Any] = {
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": spec.tty,
        "Cmd": list(spec.argv),
        "Env": [*spec.env, f"{MARK_VARIABLE}={mark}"],
    }
    if spec.user:
        body["User"] = spec.user
    if spec.workdir:
        body["WorkingDir"] = spec.workdir
    return await create_from(source, cid, body)


async def create_from(source: DockerSource, cid: str, body: dict[str, Any]) -> str:
    """`POST /containers/{id}/exec` of an exec create body as the API has it."""

    async def post(d: aiodocker.Docker) -> str:
        answer = await d._query_json(f"containers/{cid}/exec", method="POST", data=json.dumps(body))
        if not isinstance(answer, dict) or not isinstance(answer.get("Id"), str):
            raise ApiError(f"exec create: unexpected answer {str(answer)[:80]!r}")
        return str(answer["Id"])

    try:
        return await source.call("exec/create", post)
    except ApiError as exc:
        # Podman answers 500 for a container that is not running.
        if _IMPROPER.search(str(exc)):
            raise Conflict(str(exc)) from None
        raise


async def start(source: DockerSource, exec_id: str, tty: bool) -> SocketChannel | ThreadChannel:
    """`POST /exec/{id}/start`, hijacked: the command runs once Docker has it."""
    thread, docker = source._client("exec/start")
    plain = source.target.scheme in ("unix", "tcp") and source.target.tls is None

    async def run() -> tuple[int, bytes] | ThreadChannel:
        try:
            resp = await asyncio.wait_for(_hijack(docker, exec_id, tty), source.timeout)
        except DOCKER_ERRORS as exc:
            raise translate(exc) from exc
        # From here to the return no await: what arrives meanwhile stays
        # with aiohttp (its tail), and is taken with the socket.
        taken = _take_socket(resp) if plain else None
        if taken is not None:
            return taken
        channel = ThreadChannel(thread, resp, tty)
        channel.parse()
        return channel

    started = thread.submit(run())
    try:
        got = await await_future(started)
    except BaseException:
        started.add_done_callback(_drop_unclaimed)
        raise
    if isinstance(got, ThreadChannel):
        return got
    fd, early = got
    return SocketChannel(socket.socket(fileno=fd), tty, early)


def _drop_unclaimed(started: concurrent.futures.Future[tuple[int, bytes] | ThreadChannel]) -> None:
    """A start whose caller went (a signal) before it was answered: its
    connection is closed, which ends the command as Docker does."""
    if started.cancelled() or started.exception() is not None:
        return
    got = started.result()
    if isinstance(got, ThreadChannel):
        got.close()
    else:
        os.close(got[0])


async def _hijack(docker: aiodocker.Docker, exec_id: str, tty: bool) -> aiohttp.ClientResponse:
    """The start request, answered "101 UPGRADED": the connection is the exec's now."""
    resp = await docker._do_query(
        f"exec/{exec_id}/start",
        method="POST",
        data=json.dumps({"Detach": False, "Tty": tty}),
        headers={"Connection": "Upgrade", "Upgrade": "tcp", "Content-Type": "application/json"},
        timeout=aiohttp.ClientTimeout(),  # the stream lasts as long as the command
        read_until_eof=False,
    )
    if resp.connection is None:
        body = await resp.read()
        resp.close()
        raise ApiError(f"exec start: Docker closed the connection ({resp.status}: {body[:100]!r})")
    return resp


class _Tail:
    """What aiohttp read past the upgrade's answer, as its payload parser."""

    def __init__(self) -> None:
        self.data = bytearray()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.data += data
        return False, b""

    def feed_eof(self) -> None:
        pass

    def set_exception(self, exc: BaseException, cause: BaseException | None = None) -> None:
        pass


def _take_socket(resp: aiohttp.ClientResponse) -> tuple[int, bytes] | None:
    """Take a plain socket from aiohttp: a duplicate of its descriptor, and
    what aiohttp read past the answer. aiohttp then closes its own descriptor,
    which leaves the connection open (no shutdown). None if it is no socket."""
    conn = resp.connection
    protocol = conn.protocol if conn is not None else None
    transport = protocol.transport if protocol is not None else None
    if protocol is None or transport is None or transport.get_extra_info("sslcontext"):
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        return None
    if sock.family != socket.AF_UNIX:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    tail = _Tail()
    protocol.set_parser(tail, tail)
    transport.pause_reading()
    fd = os.dup(sock.fileno())
    resp.close()
    return fd, bytes(tail.data)


async def inspect(source: DockerSource, exec_id: str) -> ExecState:
    async def fetch(d: aiodocker.Docker) -> ExecState:
        data = await d._query_json(f"exec/{exec_id}/json")
        if not isinstance(data, dict):
            raise ApiError(f"exec inspect: unexpected answer {str(data)[:80]!r}")
        code = data.get("ExitCode")
        return ExecState(
            bool(data.get("Running")),
            int(data.get("Pid") or 0),
            int(code) if isinstance(code, int) else None,
        )

    return await source.call("exec/inspect", fetch)


async def signal(source: DockerSource, cid: str, pid: int, mark: str, name: str) -> None:
    """Send signal `name` (SIGKILL, 15...) to the exec marked `mark`, whose host PID is `pid`.

    From this host when /proc shows that PID with the mark (a local engine,
    and we may signal it); else by an exec of sh, tr, grep and kill inside
    the container, which a container without them cannot do.
    """
    number = int(name) if name.isdigit() else int(signals.Signals[name])
    if pid > 0 and _marked_here(pid, mark):
        try:
            os.kill(pid, number)
            return
        except ProcessLookupError:
            return  # it has just ended
        except PermissionError:
            pass
    spec = ExecSpec(("sh", "-c", _KILL_MARKED, f"{MARK_VARIABLE}={mark}", str(number)))
    await run_to_end(source, await create(source, cid, spec, "kill"), 0)


async def run_to_end(source: DockerSource, exec_id: str, keep: int) -> bytes:
    """`POST /exec/{id}/start`, not hijacked (no stdin): the command's output,
    stdout and stderr as they came, of which the first `keep` bytes are kept,
    once it has ended (within the usual deadline)."""

    async def run(d: aiodocker.Docker) -> bytes:
        async with d._query(
            f"exec/{exec_id}/start",
            method="POST",
            data=json.dumps({"Detach": False, "Tty": False}),
            headers={"Content-Type": "application/json"},
        ) as resp:
            demux = Demuxer(resp.headers.get("Content-Type", ""))
            kept = bytearray()
            async for chunk in resp.content.iter_any():
                if len(kept) < keep:
                    kept += demux.feed(chunk)
            if len(kept) < keep:
                kept += demux.flush()
            return bytes(kept[:keep])

    return await source.call("exec/start", run)


class Frames:
    """The exec stream's framing removed as aiohttp reads it (ThreadChannel):
    each arrival becomes one message per run of frames of one stream. A
    TTY's stream is raw (all stdout)."""

    def __init__(self, queue: FlowControlDataQueue[Run], tty: bool) -> None:
        self.queue = queue
        self.tty = tty
        self._frames = FrameSplitter()

    def set_exception(self, exc: BaseException, cause: BaseException | None = None) -> None:
        self.queue.set_exception(exc)

    def feed_eof(self) -> None:
        self.queue.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.tty:
            self.queue.feed_data((1, bytes(data)), len(data))
            return False, b""
        for run in self._frames.feed(data):
            self.queue.feed_data(run, len(run[1]))
        if self._frames.broken:
            self.set_exception(ApiError("exec stream: a frame header past the largest frame"))
        return False, b""


def _marked_here(pid: int, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(1 << 20)
    except OSError:
        return False
    return f"{MARK_VARIABLE}={mark}".encode() in environ.split(b"\0")


__all__ = ["DockerExec", "DockerProblem", "ExecState", "SocketChannel", "ThreadChannel"]
