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

The producer runs on the Docker client's thread and writes through a
LogWriter; everything else about a spool lives on trio and changes only
there, so readers need no locks (see spool.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import trio

from dockerfs_fuse.engine.spool import Cancellable, Spool, SpoolWriter

log = logging.getLogger(__name__)

# A follow request that failed (Docker restarted, say) is started again when
# a reader wants more, at most this often per spool.
FOLLOW_RETRY_INTERVAL = 1.0


class SpoolError(Exception):
    """The spool file could not be written (a full disk, say)."""


class TooManyLogs(Exception):
    """Every log stream the daemon allows is in use."""


# start(cid, out, follow) begins one request for a container's log, writing
# into `out` and ending with out.finish(); the result cancels it.
LogStarter = Callable[[str, "LogWriter", bool], Cancellable]


class LogWriter(SpoolWriter):
    """The producer's end of a log spool (a docker.sinks.LogSink)."""

    def __init__(self, spool: LogSpool, fd: int, skip: int) -> None:
        super().__init__(fd, offset=spool.size)
        self._spool = spool
        self._skip = skip

    def write(self, data: bytes) -> None:
        """Append demultiplexed bytes (the first `skip` of them are dropped)."""
        if self._skip:
            dropped = min(self._skip, len(data))
            data = data[dropped:]
            self._skip -= dropped
        try:
            self._append(data)
        except OSError as exc:
            raise SpoolError(f"writing the log spool: {exc}") from None
        if data:
            self._post(self._spool._grew, self._offset)

    def finish(self, error: Exception | None) -> None:
        """The request ended: normally (error None) or with the reason."""
        self._post(self._spool._finished, self, error)


class LogSpool(Spool):
    """One container's log on disk, with what is known about its end.
    Freed in close(), when the last open of the log is released."""

    # What each request writes through (events.py has its own).
    _writer_class: type[LogWriter] = LogWriter

    def __init__(self, cid: str, start: LogStarter, running: Callable[[], bool]) -> None:
        super().__init__(prefix="dockerfs-log-")
        self.cid = cid
        self._start = start
        self._running = running
        # Bytes on disk that readers may read.
        self.size = 0
        # The log so far is all here (`cat logs` ends at `size`).
        self.history_done = False
        # Why the log so far could not be read (the spool is then useless).
        self.error: Exception | None = None
        # Why following new output stopped short (Docker went away, say).
        self.follow_error: Exception | None = None
        self.handles = 0
        self._writer: LogWriter | None = None
        # Someone wants new output; a follow request ran (start events aside,
        # only the first is started by readers: a stale "running" must not
        # replay the log over and over).
        self._wanted = False
        self._followed = False
        self._followed_at = -math.inf  # trio.current_time() of the last follow request
        self._retrying = False  # the follow request is a retry that has brought nothing yet
        self._following = False
        self._follow_again = False
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
        return self._read(offset, size, self.size)

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
            fd = self._writer_fd()
        except OSError as exc:  # EMFILE, say
            fd, failed = -1, SpoolError(f"opening the log spool: {exc}")
        # A follow request replays the whole log: skip what is already here.
        self._writer = self._writer_class(self, fd, skip=self.size if follow else 0)
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

    def close(self) -> None:
        """Cancel any request and free the file."""
        if not self.closed:
            self._writer = None
            self._free()


class LogSpools:
    """The open spools, one per container, shared by every open of its logs.

    `limit` bounds the containers whose logs are open at once: each holds a
    connection to Docker while it loads or follows, and Docker's other
    requests need some left.
    """

    def __init__(self, start: LogStarter, running: Callable[[str], bool], limit: int) -> None:
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
