"""The calls that change a container's files (engine/writes.py's WriteBackend).

`PUT /containers/{id}/archive?path=DIR` extracts a tar into DIR, resolving
DIR and every member inside the container as `docker cp` does; it adds and
replaces, never removes or renames. What it cannot do is done by a short
exec of a tool in the container (`mv`, `rm`, `rmdir`, `chmod`...), run as
root, whose exit code and output are the answer.

An upload's body is a staged file on disk. Over a local unix socket it is
sent by the kernel (sendfile) on a connection of its own, from a worker
thread: aiohttp would read it into Python and copy it again on its way
out, which made an upload take about twice as long as `docker cp`'s. Over
TCP, TLS or ssh it goes through the client, read a chunk at a time.

`open_shell` starts the long-lived `sh` that engine/channel.py sends small
changes to: an exec with its stdin attached (hijacked), as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiodocker
import aiohttp
import trio

from dockerfs_fuse.docker import exec as exec_calls
from dockerfs_fuse.docker.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    DockerProblem,
    NoSpace,
    NotFound,
    ReadOnlyFs,
    translate,
)
from dockerfs_fuse.docker.framing import Run
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.files import NotAFile

# What a tool's run keeps of its output (for the log): the first words say why.
OUTPUT_KEPT = 4096
# Uploads sent at once over a local socket, each from a thread of its own.
UPLOAD_THREADS = 8
# A container in these states is on its way out (Docker's removal in progress).
REMOVED_STATES = frozenset(["removing", "dead"])
# Exit codes of an exec whose command could not be started: not found (127), not
# executable (126). The container lacks the tool.
NO_TOOL = frozenset([126, 127])
# An upload's answer comes once the engine has extracted all of it: allow that
# long after the last byte was sent before giving up, and the whole upload
# that long plus a second per UPLOAD_MIN_RATE bytes (a stalled engine is EIO).
EXTRACT_TIMEOUT = 120.0
UPLOAD_MIN_RATE = 1 << 20
# Bytes of a staged file read at a time where it cannot be sent by the kernel.
CHUNK = 1 << 20
# What is kept of an upload's answer (an error's JSON; success has none).
ANSWER_MAX = 64 << 10


@dataclass(frozen=True)
class TarBody:
    """A tar as an upload sends it: `head`, then the first `length` bytes of
    the file open as `fd` (none when `length` is 0), then `tail`. The body is
    never held in memory: it is sent from the file."""

    head: bytes
    tail: bytes
    fd: int = -1
    length: int = 0

    @property
    def size(self) -> int:
        return len(self.head) + self.length + len(self.tail)

    def chunks(self) -> Iterator[bytes]:
        """The whole tar, read from the file a chunk at a time."""
        yield self.head
        offset = 0
        while offset < self.length:
            data = os.pread(self.fd, min(CHUNK, self.length - offset), offset)
            if not data:
                raise OSError(errno.EIO, "the staged file is shorter than its size")
            yield data
            offset += len(data)
        yield self.tail


@dataclass(frozen=True)
class Ran:
    """A tool's run: its exit code and the start of what it printed."""

    code: int
    output: bytes

    @property
    def no_tool(self) -> bool:
        return self.code in NO_TOOL


def _classified(exc: DockerProblem) -> Exception:
    """An upload's refusal, by what the engine says: a read-only root
    filesystem, a full disk, a directory where a file would go (or the
    reverse: noOverwriteDirNonDir), a path that is not a directory."""
    text = str(exc).lower()
    if "read-only" in text:
        return ReadOnlyFs(str(exc))
    if "no space left" in text or "disk quota" in text:
        return NoSpace(str(exc))
    if "cannot overwrite directory" in text:
        return NotAFile(str(exc))
    if "cannot overwrite non-directory" in text:
        return AlreadyExists(str(exc))
    if isinstance(exc, NotFound | Conflict):
        return exc
    if "not a directory" in text or "no such file" in text:
        return NotFound(str(exc))
    return exc


class DockerWrites:
    """The writing calls of one engine."""

    def __init__(self, source: DockerSource) -> None:
        self.source = source
        # Uploads' threads, apart from trio's shared ones: forty slow uploads
        # must not hold every thread the kernel's invalidations need.
        self._uploads = trio.CapacityLimiter(UPLOAD_THREADS)

    async def put_archive(self, cid: str, directory: str, body: TarBody) -> None:
        """Upload `body` into `directory`; returns once the engine has
        extracted it. Never a directory replaced by a file, nor the reverse:
        refused (noOverwriteDirNonDir)."""
        query = urllib.parse.quote(directory.encode("utf-8", "surrogateescape"), safe="/")
        path = f"containers/{cid}/archive?path={query}&noOverwriteDirNonDir=1"
        what = "containers/archive PUT"
        try:
            where = self.source.unix_socket
            if where is None:
                await self._put_by_client(path, body, what)
                return
            # The thread reads a descriptor of its own: the draft's may be
            # closed meanwhile (at unmount), and its number given to another file.
            own = os.dup(body.fd) if body.length else -1
            try:
                with self.source.counted(what):
                    status, answer = await trio.to_thread.run_sync(
                        _put_over_unix,
                        where,
                        self.source.api_path(path),
                        replace(body, fd=own),
                        self.source.timeout,
                        limiter=self._uploads,
                    )
            finally:
                if own >= 0:
                    os.close(own)
            if not 200 <= status < 300:
                raise translate(aiodocker.DockerError(status, _message(status, answer)))
        except OSError as exc:
            raise _classified(translate(exc)) from None
        except DockerProblem as exc:
            raise _classified(exc) from None

    async def _put_by_client(self, path: str, body: TarBody, what: str) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.source.timeout,
            sock_connect=self.source.timeout,
            sock_read=EXTRACT_TIMEOUT,
        )

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in body.chunks():
                yield chunk
                await asyncio.sleep(0)  # the loop serves other requests meanwhile

        async def put(d: aiodocker.Docker) -> None:
            async with d._query(
                path,
                method="PUT",
                data=chunks(),
                headers={"Content-Type": "application/x-tar"},
                timeout=timeout,
            ):
                pass

        deadline = EXTRACT_TIMEOUT + body.size / UPLOAD_MIN_RATE
        await self.source.call(what, put, timeout=deadline)

    async def is_running(self, cid: str) -> bool:
        """Whether the container runs now (not paused): a tool can be run in it."""
        info = await self.source.inspect(cid)
        state = info.get("State") or {}
        return bool(state.get("Running")) and not state.get("Paused")

    async def is_gone(self, cid: str) -> bool:
        """Whether the container is removed, or its removal has begun."""
        try:
            info = await self.source.inspect(cid)
        except NotFound:
            return True
        state = info.get("State") or {}
        return state.get("Status") in REMOVED_STATES

    async def open_shell(self, cid: str) -> Shell:
        return await open_shell(self.source, cid)

    async def run(self, cid: str, argv: Sequence[str]) -> Ran:
        """Run `argv` in the container as root, to its end (within the usual
        deadline); its exit code and output. Raises Conflict when it is not
        running (or paused), NotFound when it is gone."""
        body = _as_root(argv, stdin=False)
        exec_id = await exec_calls.create_from(self.source, cid, body)
        output = await exec_calls.run_to_end(self.source, exec_id, OUTPUT_KEPT)
        state = await exec_calls.inspect(self.source, exec_id)
        if state.exit_code is None:
            raise ApiError(f"exec inspect: no exit code for {argv[0]!r}")
        return Ran(state.exit_code, output)


class Shell:
    """A started `sh` of a container: its stdin written, its stdout and
    stderr read (each read: the runs of output since, None at its end)."""

    def __init__(
        self,
        source: DockerSource,
        cid: str,
        exec_id: str,
        mark: str,
        stream: exec_calls.SocketChannel | exec_calls.ThreadChannel,
    ) -> None:
        self._source = source
        self._cid = cid
        self.exec_id = exec_id
        self.mark = mark
        self._stream = stream

    async def read(self) -> list[Run] | None:
        return await self._stream.read()

    async def write(self, data: bytes) -> None:
        await self._stream.write(data)

    def counted(self) -> contextlib.AbstractContextManager[None]:
        """One command's round trip, counted with the engine's requests."""
        return self._source.counted("shell command")

    def close(self) -> None:
        """Drop the connection: the shell reads the end of its stdin and exits
        (once it has run what it already read)."""
        self._stream.close()

    async def end(self) -> bool:
        """Kill the shell (by its mark, as a session's signal) unless the
        engine says it ended, then poll until it does: whether it did. The
        caller bounds the wait. An exec the engine no longer knows went with
        its container."""
        try:
            state = await exec_calls.inspect(self._source, self.exec_id)
            if state.running:
                await exec_calls.signal(self._source, self._cid, state.pid, self.mark, "SIGKILL")
            delay = 0.01
            while state.running:
                await trio.sleep(delay)
                delay = min(delay * 2, 0.5)
                state = await exec_calls.inspect(self._source, self.exec_id)
        except NotFound:
            pass
        return True


async def open_shell(source: DockerSource, cid: str) -> Shell:
    """`sh` started in the container as root, its stdin attached (no TTY:
    stdout and stderr come framed). Conflict when it is not running (or is
    paused), NotFound when it is gone. A container without `sh` starts
    one that ends at once: the caller finds out at its first line. Its mark
    is its own, so that killing it kills no other channel's shell."""
    mark = f"channel-{secrets.token_hex(8)}"
    body = _as_root(["sh"], stdin=True)
    body["Env"] = [f"{exec_calls.MARK_VARIABLE}={mark}"]
    exec_id = await exec_calls.create_from(source, cid, body)
    stream = await exec_calls.start(source, exec_id, False)
    return Shell(source, cid, exec_id, mark, stream)


def _as_root(argv: Sequence[str], *, stdin: bool) -> dict[str, Any]:
    """An exec of `argv` as root, its output framed (no TTY): a tool's run,
    or (with stdin) the shell of engine/channel.py."""
    return {
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "User": "0",
        "Cmd": list(argv),
    }


def _put_over_unix(where: str, target: str, body: TarBody, connect: float) -> tuple[int, bytes]:
    """PUT `body` to `target` on a connection of its own to the unix socket
    `where`, the file's bytes sent by the kernel; the status and the start
    of the answer. Blocking: run in a worker thread. Each step (connecting,
    every send, the answer, which comes once the engine has extracted it
    all) may take at most its timeout: a stalled engine is an error."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(connect)
        sock.connect(where)
        sock.settimeout(EXTRACT_TIMEOUT)
        request = (
            f"PUT {target} HTTP/1.1\r\nHost: docker\r\nContent-Type: application/x-tar\r\n"
            f"Content-Length: {body.size}\r\nConnection: close\r\n\r\n"
        )
        refused: OSError | None = None
        try:
            sock.sendall(request.encode("ascii") + body.head)
            if body.length:
                with open(body.fd, "rb", buffering=0, closefd=False) as file:
                    sent = sock.sendfile(file, 0, body.length)
                if sent != body.length:
                    if os.fstat(body.fd).st_size < body.length:
                        raise OSError(errno.EIO, "the staged file is shorter than its size")
                    raise BrokenPipeError(errno.EPIPE, "the engine stopped reading")
            sock.sendall(body.tail)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # The engine refused before reading it all (a read-only root
            # filesystem, a full disk, a container gone): its answer says why.
            refused = exc
        answer = bytearray()
        try:
            while len(answer) < ANSWER_MAX:
                data = sock.recv(ANSWER_MAX)
                if not data:
                    break
                answer += data
        except (BrokenPipeError, ConnectionResetError) as exc:
            # An engine that answered before reading the whole body resets
            # the connection once it closes it: what it sent is read first.
            refused = refused or exc
        except TimeoutError:
            if refused is None:
                raise
    head, _, rest = bytes(answer).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        if refused is not None:
            raise refused
        raise OSError(errno.EPROTO, f"not an HTTP answer: {bytes(answer[:80])!r}")
    if b"transfer-encoding: chunked" in head.lower():
        rest = _dechunked(rest)
    return int(status_line[1]), rest


def _dechunked(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def _message(status: int, answer: bytes) -> str:
    """The engine's reason, from its JSON answer ({"message": ...}) or as it is."""
    try:
        said = json.loads(answer)
    except ValueError:
        said = None
    if isinstance(said, dict) and isinstance(said.get("message"), str):
        return str(said["message"])
    return answer.decode(errors="replace").strip() or f"status {status}"
