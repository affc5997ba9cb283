"""Docker's exec endpoints, for exec sessions (engine/exec.py).

`POST /containers/{id}/exec` makes an exec, `POST /exec/{id}/start`
(hijacked: the HTTP connection becomes the command's stdin, stdout and
stderr) runs it, `GET /exec/{id}/json` says whether it runs, its PID and
its exit code. Docker has no endpoint to signal an exec: `signal` does it
from this host when the exec's process is ours to see (a local engine),
else with a second exec of `kill` inside the container.

The hijacked stream is read only when a reader asks (`Channel.read`):
`Frames` splits stdout from stderr, and the socket is left unread past
256 KiB queued, so a reader that stops reading stops the command (as a pipe
does) and nothing grows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal as signals
from dataclasses import dataclass
from typing import Any, TypeVar

import aiodocker
import trio
from aiodocker._flow_control_queue import FlowControlDataQueue
from aiodocker.stream import Message
from aiodocker.stream import Stream as HijackedStream

from dockerfs_fuse.docker.bridge import AsyncioThread, await_future
from dockerfs_fuse.docker.errors import (
    DOCKER_ERRORS,
    ApiError,
    Conflict,
    DockerProblem,
    translate,
)
from dockerfs_fuse.docker.framing import MAX_FRAME
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.exec import ExecSpec

T = TypeVar("T")

# How much one read hands over at most: what the stream already holds, so
# a fast command costs one thread hop per this many bytes, not per frame.
READ_BATCH = 256 << 10
# What the stream's queue holds before the socket is left unread (aiohttp
# pauses at twice this): the most the daemon holds per session, with the
# session's own buffers (engine/exec.py).
QUEUE_LIMIT = 128 << 10
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


class Channel:
    """The hijacked connection of one started exec."""

    def __init__(self, thread: AsyncioThread, stream: HijackedStream, tty: bool) -> None:
        self._thread = thread
        self._stream = stream
        self.tty = tty
        self._pending: concurrent.futures.Future[list[tuple[int, bytes]] | None] | None = None

    async def read(self) -> list[tuple[int, bytes]] | None:
        """What the command wrote since, as (1 stdout | 2 stderr, bytes); None at the end.

        A read cancelled in trio (a reader's EINTR) is left running, and the
        next read returns its answer: cancelled there, bytes already taken
        from the stream would be lost."""
        if self._pending is None:
            self._pending = self._thread.submit(self._read())
        pending = self._pending
        await _finished(pending)
        self._pending = None
        return pending.result()

    async def _read(self) -> list[tuple[int, bytes]] | None:
        try:
            first = await self._stream.read_out()
            if first is None:
                return None
            out = [(first.stream, first.data)]
            size = len(first.data)
            queue = self._stream._queue
            while queue is not None and size < READ_BATCH and queue._buffer:
                more = await self._stream.read_out()
                if more is None:
                    break
                out.append((more.stream, more.data))
                size += len(more.data)
            return out
        except DOCKER_ERRORS as exc:
            raise translate(exc) from exc

    async def write(self, data: bytes) -> None:
        """Into the command's stdin; returns once the socket took it (backpressure)."""
        await await_future(self._thread.submit(self._write(data)))

    async def _write(self, data: bytes) -> None:
        try:
            await self._stream.write_in(data)
        except DOCKER_ERRORS as exc:
            raise translate(exc) from exc
        except (RuntimeError, AssertionError) as exc:  # aiodocker's "closed transport"
            raise ApiError(f"stdin is closed: {exc}") from None

    async def close_write(self) -> bool:
        """End the command's stdin (a half-close); whether the connection can
        (a TLS or ssh connection cannot: then stdin stays open)."""
        return await await_future(self._thread.submit(self._close_write()))

    async def _close_write(self) -> bool:
        resp = self._stream._resp
        transport = resp.connection.transport if resp and resp.connection else None
        if transport is None or not transport.can_write_eof():
            return False
        transport.write_eof()
        return True

    def close(self) -> None:
        """Drop the connection: the command's stdout and stderr are closed."""
        if self._pending is not None:
            self._pending.cancel()
        self._thread.submit(self._stream.close())


async def _finished(fut: concurrent.futures.Future[T]) -> None:
    """Wait in trio until a future of the asyncio thread is done, never cancelling it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    await done.wait()


class DockerExec:
    """The exec calls of one engine (engine/exec.py's ExecBackend)."""

    def __init__(self, source: DockerSource) -> None:
        self.source = source

    async def create(self, cid: str, spec: ExecSpec, mark: str) -> str:
        return await create(self.source, cid, spec, mark)

    async def start(self, exec_id: str, tty: bool) -> Channel:
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


async def start(source: DockerSource, exec_id: str, tty: bool) -> Channel:
    """`POST /exec/{id}/start`, hijacked: the command runs once this returns."""
    thread, docker = source._client("exec/start")

    async def run() -> HijackedStream:
        stream = docker.containers.exec(exec_id)
        stream._tty = tty
        hijacked = stream.start(detach=False)
        try:
            await asyncio.wait_for(hijacked._init(), source.timeout)
        except DOCKER_ERRORS as exc:
            with contextlib.suppress(Exception):
                await hijacked.close()
            raise translate(exc) from exc
        _parse_in_runs(hijacked, tty)
        return hijacked

    return Channel(thread, await await_future(thread.submit(run())), tty)


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
    exec_id = await create(source, cid, spec, "kill")

    async def run(d: aiodocker.Docker) -> None:
        async with d._query(
            f"exec/{exec_id}/start",
            method="POST",
            data=json.dumps({"Detach": False, "Tty": False}),
            headers={"Content-Type": "application/json"},
        ) as resp:
            await resp.read()

    await source.call("exec/start", run)


def _parse_in_runs(hijacked: HijackedStream, tty: bool) -> None:
    """Parse the stream with `Frames` into a queue of QUEUE_LIMIT: aiodocker's
    parser queues each frame (32 KiB at most) as it is, which costs a copy,
    a move of the rest and a thread hop per frame."""
    resp = hijacked._resp
    protocol = resp.connection.protocol if resp is not None and resp.connection else None
    if protocol is None:
        return
    queue: FlowControlDataQueue[Message] = FlowControlDataQueue(protocol, limit=QUEUE_LIMIT)
    protocol.set_parser(Frames(queue, tty), queue)
    hijacked._queue = queue


class Frames:
    """Docker's stdout/stderr framing of an attached stream (see framing.py),
    removed as bytes arrive: each arrival becomes one message per run of
    frames of one stream. A TTY's stream is raw (all stdout)."""

    def __init__(self, queue: FlowControlDataQueue[Message], tty: bool) -> None:
        self.queue = queue
        self.tty = tty
        self._buf = bytearray()

    def set_exception(self, exc: BaseException) -> None:
        self.queue.set_exception(exc)

    def feed_eof(self) -> None:
        self.queue.feed_eof()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self.tty:
            self.queue.feed_data(Message(1, bytes(data)), len(data))
            return False, b""
        buf = self._buf
        buf += data
        view = memoryview(buf)
        pos, run, which = 0, list[memoryview](), 0
        try:
            while len(buf) - pos >= 8:
                kind = buf[pos]
                length = int.from_bytes(view[pos + 4 : pos + 8], "big")
                if length > MAX_FRAME:
                    self.set_exception(ApiError(f"exec stream: a frame of {length} bytes"))
                    pos = len(buf)
                    run.clear()
                    break
                if len(buf) - pos < 8 + length:
                    break
                if run and kind != which:
                    self._put(which, run)
                    run = []
                which = kind
                run.append(view[pos + 8 : pos + 8 + length])
                pos += 8 + length
            if run:
                self._put(which, run)
        finally:
            run.clear()
            view.release()
        del buf[:pos]
        return False, b""

    def _put(self, which: int, run: list[memoryview]) -> None:
        data = b"".join(run)
        self.queue.feed_data(Message(which, data), len(data))


def _marked_here(pid: int, mark: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read(1 << 20)
    except OSError:
        return False
    return f"{MARK_VARIABLE}={mark}".encode() in environ.split(b"\0")


__all__ = ["Channel", "DockerExec", "DockerProblem", "ExecState"]
