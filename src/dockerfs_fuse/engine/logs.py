"""Container logs as files: Docker's framing removed, the bytes spooled to disk.

A log can be far larger than memory, and the tools that read logs seek
(`tail`, `less`) and poll the size to follow (`tail -f` compares `st_size`
with what it has read, about once a second). So a log is never held in
Python bytes: what Docker sends is written, as it arrives, to an unlinked
temporary file, the spool. There is one spool per container while anyone
has its `logs` or `logs.follow` open, shared by every reader, each reading
at its own offset; closing the last one cancels the request and frees the
file.

A spool is filled by up to two requests, one after the other. First the
log so far (`follow=0`): where it ends is where `cat logs` ends, and until
it ends the size shown is 0, so a `tail` that opens a spool still loading
reads it as a pipe, to its end, instead of taking a partial size for the
whole. Then, once a reader shows it wants more (a `logs.follow` is open, the
size is polled, or a reader reads at the end again) and while the container
runs, `follow=1`, which Docker answers by replaying the log from its start
and going on: the bytes already spooled are skipped and the rest appended.
Docker's follow stream carries no mark where the history ends, which is why
this is not one request; and one-shot readers (`cat`, `grep -r`) never cost
the second. A follow request that fails (Docker restarted, say) is made
again when a reader next wants more, at most once a second.

The producer runs on the Docker module's thread and writes through a
LogWriter; everything else about a spool lives on trio and changes only
there, so readers need no locks.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from typing import Protocol

import trio

log = logging.getLogger(__name__)

# The largest frame taken for a frame. Docker's stdcopy writes each log
# message as one frame, with no limit of its own; the engine's copier cuts
# messages at 16 KiB, or at the log driver's buffer size (awslogs: 256 KiB).
# A longer declared length is a header guessed wrong, in a raw stream that
# happens to look framed, and would buffer up to 4 GiB.
MAX_FRAME = 1 << 20

# A follow request that failed (Docker restarted, say) is started again when
# a reader wants more, at most this often per spool.
FOLLOW_RETRY_INTERVAL = 1.0


class Demuxer:
    """Docker's log stream framing, removed.

    A non-TTY container's log stream is a sequence of frames, each an 8-byte
    header (stream type, three zero bytes, big-endian length) and a payload.
    A TTY container's stream is raw. Older engines do not say which in the
    Content-Type, so the first header is recognised by its shape. A header
    declaring more than MAX_FRAME is no header: the stream is raw from there.
    """

    def __init__(self, content_type: str = "") -> None:
        self._buf = bytearray()
        self._raw: bool | None = None
        if "raw-stream" in content_type:
            self._raw = True
        elif "multiplexed-stream" in content_type:
            self._raw = False

    def feed(self, data: bytes) -> bytes:
        if self._raw:
            return bytes(data)
        self._buf += data
        if self._raw is None:
            if len(self._buf) < 8:
                return b""
            head = self._buf[:8]
            framed = head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0"
            self._raw = not (framed and int.from_bytes(head[4:8], "big") <= MAX_FRAME)
            if self._raw:
                whole = bytes(self._buf)
                self._buf.clear()
                return whole
        out = bytearray()
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[4:8], "big")
            if length > MAX_FRAME:
                self._raw = True
                out += self._buf
                self._buf.clear()
                break
            if len(self._buf) < 8 + length:
                break
            out += self._buf[8 : 8 + length]
            del self._buf[: 8 + length]
        return bytes(out)

    def flush(self) -> bytes:
        """Whatever is left at the end: a short raw stream, or a truncated frame."""
        rest = bytes(self._buf)
        self._buf.clear()
        if self._raw is None or self._raw:
            return rest
        return rest[8:] if len(rest) > 8 else b""


class SpoolError(Exception):
    """The spool file could not be written (a full disk, say)."""


class TooManyLogs(Exception):
    """Every log stream the daemon allows is in use."""


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


# start(cid, out, follow) begins one request for a container's log, writing
# into `out` and ending with out.finish(); the result cancels it.
Starter = Callable[[str, "LogWriter", bool], Cancellable]


class LogWriter:
    """The producer's end of a spool, used from the Docker module's thread.

    It has a file descriptor of its own (a dup), so that the spool can be
    closed on trio while a cancelled producer is still unwinding; every
    change is handed to trio with `run_sync_soon`.
    """

    def __init__(self, spool: LogSpool, fd: int, skip: int) -> None:
        self._spool = spool
        self._fd = fd
        self._offset = spool.size
        self._skip = skip
        self._token = trio.lowlevel.current_trio_token()

    def write(self, data: bytes) -> None:
        """Append demultiplexed bytes (the first `skip` of them are dropped)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            data = data[dropped:]
            self._skip -= dropped
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._fd, view, self._offset)
                view = view[written:]
                self._offset += written
        except OSError as exc:
            raise SpoolError(f"writing the log spool: {exc}") from None
        if data:
            self._post(self._spool._grew, self._offset)

    def finish(self, error: Exception | None) -> None:
        """The request ended: normally (error None) or with the reason."""
        self._post(self._spool._finished, self, error)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is exiting
            self._token.run_sync_soon(fn, *args)


class LogSpool:
    """One container's log on disk, with what is known about its end."""

    def __init__(self, cid: str, start: Starter, running: Callable[[], bool]) -> None:
        self.cid = cid
        self._start = start
        self._running = running
        # Closed in close(), when the last open of the log is released.
        self._file = tempfile.TemporaryFile(prefix="dockerfs-log-", buffering=0)  # noqa: SIM115
        self._fd = self._file.fileno()
        # Bytes on disk that readers may read.
        self.size = 0
        # The log so far is all here (`cat logs` ends at `size`).
        self.history_done = False
        # Why the log so far could not be read (the spool is then useless).
        self.error: Exception | None = None
        # Why following new output stopped short (Docker went away, say).
        self.follow_error: Exception | None = None
        self.handles = 0
        self.closed = False
        self._writer: LogWriter | None = None
        self._request: Cancellable | None = None
        # Someone wants new output; a follow request ran (start events aside,
        # only the first is started by readers: a stale "running" must not
        # replay the log over and over).
        self._wanted = False
        self._followed = False
        self._followed_at = -math.inf  # trio.current_time() of the last follow request
        self._retrying = False  # the follow request is a retry that has brought nothing yet
        self._following = False
        self._follow_again = False
        self._changed = trio.Event()
        self._begin(follow=False)

    # -- what readers see ---------------------------------------------------------

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def following(self) -> bool:
        """New output may still arrive (a follow request runs or is due)."""
        return self._following or self._follow_again

    def shown_size(self) -> int:
        """`st_size`: 0 while the log so far is still arriving (see the module doc)."""
        return self.size if self.history_done else 0

    def read(self, offset: int, size: int) -> bytes:
        """Bytes already spooled at `offset`, at most `size` of them."""
        size = min(size, self.size - offset)
        return os.pread(self._fd, size, offset) if size > 0 else b""

    def at_eof(self, follow: bool) -> bool:
        """At `size`: whether that is the end for this kind of reader.

        `logs` ends where the log so far ends; `logs.follow` when following
        stops (the container stopped). Raises what cut either short.
        """
        if not self.history_done:
            if self.error is not None:
                raise self.error
            return False
        if not follow:
            return True
        if self.following:
            return False
        if self.follow_error is not None:
            raise self.follow_error
        return True

    async def changed(self) -> None:
        """Return at the next change: more bytes, or the end of a request."""
        await self._changed.wait()

    # -- producers ----------------------------------------------------------------

    def want_more(self) -> None:
        """A reader wants new output: follow the log (once, or again after a
        failed follow, at most once per FOLLOW_RETRY_INTERVAL), if the container may run."""
        self._wanted = True
        if not self._followed:
            self._follow(check_running=True)
        elif (
            self.follow_error is not None
            and trio.current_time() - self._followed_at >= FOLLOW_RETRY_INTERVAL
        ):
            self._retrying = True
            self._follow(check_running=True)
            self._retrying = self._following  # not begun: a later start is no retry

    def container_started(self) -> None:
        """The container (re)started: follow its new output, now or when the last request ends."""
        if self._following:
            self._follow_again = True
        elif self._wanted:
            self._follow(check_running=False)  # the tree may not know it runs yet

    def _follow(self, check_running: bool) -> None:
        if self.closed or not self.history_done or self.following:
            return
        if not check_running or self._running():
            self._begin(follow=True)

    def _begin(self, follow: bool) -> None:
        # Runs in trio's run_sync_soon callbacks too (via _finished), where an
        # exception would crash the whole mount: every failure ends the request.
        failed: Exception | None = None
        try:
            fd = os.dup(self._fd)
        except OSError as exc:  # EMFILE, say
            fd, failed = -1, SpoolError(f"opening the log spool: {exc}")
        # A follow request replays the whole log: skip what is already here.
        self._writer = LogWriter(self, fd, skip=self.size if follow else 0)
        self._following = follow
        self._follow_again = False
        if follow:
            self._followed = True
            self._followed_at = trio.current_time()
            self.follow_error = None
        if failed is None:
            try:
                self._request = self._start(self.cid, self._writer, follow)
                return
            except Exception as exc:
                failed = exc
        self._writer.close()
        self._finished(self._writer, failed)

    def _grew(self, size: int) -> None:
        if not self.closed and size > self.size:
            self.size = size
            self._retrying = False
            self._wake()

    def _finished(self, writer: LogWriter, error: Exception | None) -> None:
        if self.closed or writer is not self._writer:
            return
        self._writer = self._request = None
        if not self.history_done:
            if error is None:
                self.history_done = True
                if self._wanted:
                    self._follow(check_running=True)
            else:
                self.error = error
        else:
            self._following = False
            if error is not None:
                # Logged once, not at each retry while Docker stays away.
                level = logging.DEBUG if self._retrying else logging.WARNING
                log.log(level, "following the log of %s: %s", self.cid[:12], error)
                self.follow_error = error
            if self._follow_again:
                self._begin(follow=True)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        """Cancel any request and free the file (its space goes with the last fd)."""
        if self.closed:
            return
        self.closed = True
        if self._request is not None:
            self._request.cancel()
        self._writer = self._request = None
        self._file.close()
        self._wake()


class LogSpools:
    """The open spools, one per container, shared by every open of its logs.

    `limit` bounds the containers whose logs are open at once: each holds a
    connection to Docker while it loads or follows, and Docker's other
    requests need some left.
    """

    def __init__(self, start: Starter, running: Callable[[str], bool], limit: int) -> None:
        self._start = start
        self._running = running
        self._limit = limit
        self._spools: dict[str, LogSpool] = {}

    def __len__(self) -> int:
        return len(self._spools)

    def open(self, cid: str) -> LogSpool:
        """The container's spool, joined or started. Raises TooManyLogs."""
        spool = self._spools.get(cid)
        if spool is None or spool.failed:
            # A failed spool stays with the opens that have it; this one retries.
            if len(self._spools) - (spool is not None) >= self._limit:
                raise TooManyLogs(f"{self._limit} containers' logs are open already")
            spool = LogSpool(cid, self._start, lambda: self._running(cid))
            self._spools[cid] = spool
        spool.handles += 1
        return spool

    def release(self, spool: LogSpool) -> None:
        spool.handles -= 1
        if spool.handles <= 0:
            spool.close()
            if self._spools.get(spool.cid) is spool:
                del self._spools[spool.cid]

    def polled_size(self, cid: str) -> int:
        """`st_size` of the container's `logs`. Asking for it once the log so
        far is in is how `tail -f` follows: that starts following the log."""
        spool = self._spools.get(cid)
        if spool is None:
            return 0
        if spool.history_done:
            spool.want_more()
        return spool.shown_size()

    def container_started(self, cid: str) -> None:
        spool = self._spools.get(cid)
        if spool is not None:
            spool.container_started()
