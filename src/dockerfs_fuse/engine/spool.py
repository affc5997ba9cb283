"""Spools: what a streaming request brings, on disk, read at any offset.

A log or an archive can be far larger than memory, so what Docker sends is
written, as it arrives, to an unlinked temporary file: the spool. The
request runs on the Docker client's thread and writes through a
`SpoolWriter`, which has a file descriptor of its own (a dup), so that the
spool can be closed on trio while a cancelled request is still unwinding.
Everything readers see changes on trio only (the writer hands each change
over with `run_sync_soon`), so readers need no locks.

The log spools (logs.py) and the archive spools (archive.py) are these,
with what each knows of its stream.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import Protocol

import trio


class Cancellable(Protocol):
    """A request in flight (the Docker client's future): `cancel` stops it."""

    def cancel(self) -> bool: ...


class Spool:
    """An unlinked temporary file, filled by one request at a time, and the
    event its readers wait on for the next change."""

    def __init__(self, prefix: str) -> None:
        # Closed in free(); its space goes with the last descriptor.
        self._file = tempfile.TemporaryFile(prefix=prefix, buffering=0)  # noqa: SIM115
        self._fd = self._file.fileno()
        self.closed = False
        self._request: Cancellable | None = None
        self._changed = trio.Event()

    def _writer_fd(self) -> int:
        """A descriptor of the file for a writer of its own (it closes it). Raises OSError."""
        return os.dup(self._fd)

    def _read(self, offset: int, size: int, end: int) -> bytes:
        """Bytes at `offset`, at most `size` of them, none at or past `end`."""
        size = min(size, end - offset)
        return os.pread(self._fd, size, offset) if size > 0 else b""

    async def changed(self) -> None:
        """Return at the next change: more bytes, or the end of a request."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _free(self) -> None:
        """Cancel the request if one runs and free the file (its space goes
        with the writer's descriptor, if it still has one)."""
        self.closed = True
        if self._request is not None:
            self._request.cancel()
        self._request = None
        self._file.close()
        self._wake()


class SpoolWriter:
    """The request's end of a spool, used on the Docker client's thread: it
    appends at its own offset through its own descriptor, and hands changes
    to trio."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self._fd = fd
        self._offset = offset
        self._token = trio.lowlevel.current_trio_token()

    def _append(self, data: bytes | memoryview) -> None:
        """Write `data` at the offset and move past it. Raises OSError (a full disk)."""
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, self._offset)
            view = view[written:]
            self._offset += written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        """Run fn(*args) on trio, soon."""
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is exiting
            self._token.run_sync_soon(fn, *args)
