"""The calls that change a container's files (engine/writes.py's WriteBackend).

`PUT /containers/{id}/archive?path=DIR` extracts a tar into DIR, resolving
DIR and every member inside the container as `docker cp` does; it adds and
replaces, never removes or renames. What it cannot do is done by a short
exec of a tool in the container (`mv`, `rm`, `rmdir`, `chmod`...), run as
root, whose exit code and output are the answer.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import aiodocker
import aiohttp

from dockerfs_fuse.docker import exec as exec_calls
from dockerfs_fuse.docker.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    DockerProblem,
    NoSpace,
    NotFound,
    ReadOnlyFs,
)
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.files import NotAFile

# What a tool's run keeps of its output (for the log): the first words say why.
OUTPUT_KEPT = 4096
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

    async def put_archive(
        self, cid: str, directory: str, chunks: Iterator[bytes], size: int
    ) -> None:
        """Upload a tar of `size` bytes, given as `chunks` (read on the
        Docker client's thread, as the request sends them), into
        `directory`; returns once the engine has extracted it."""
        query = urllib.parse.quote(directory.encode("utf-8", "surrogateescape"), safe="/")
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.source.timeout,
            sock_connect=self.source.timeout,
            sock_read=EXTRACT_TIMEOUT,
        )

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0)  # the loop serves other requests meanwhile

        async def put(d: aiodocker.Docker) -> None:
            async with d._query(
                # Never a directory replaced by a file, nor the reverse: refused.
                f"containers/{cid}/archive?path={query}&noOverwriteDirNonDir=1",
                method="PUT",
                data=body(),
                headers={"Content-Type": "application/x-tar"},
                timeout=timeout,
            ):
                pass

        try:
            deadline = EXTRACT_TIMEOUT + size / UPLOAD_MIN_RATE
            await self.source.call("containers/archive PUT", put, timeout=deadline)
        except DockerProblem as exc:
            raise _classified(exc) from None

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

    async def run(self, cid: str, argv: Sequence[str]) -> Ran:
        """Run `argv` in the container as root, to its end (within the usual
        deadline); its exit code and output. Raises Conflict when it is not
        running (or paused), NotFound when it is gone."""
        body: dict[str, Any] = {
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": False,
            "User": "0",
            "Cmd": list(argv),
        }
        exec_id = await exec_calls.create_from(self.source, cid, body)
        output = await exec_calls.run_to_end(self.source, exec_id, OUTPUT_KEPT)
        state = await exec_calls.inspect(self.source, exec_id)
        if state.exit_code is None:
            raise ApiError(f"exec inspect: no exit code for {argv[0]!r}")
        return Ran(state.exit_code, output)
