"""The engine view's `events`: Docker's event stream, one request per open.

Each open of `events` sends its own `GET /events` and reads what Docker
sends from then on, as a pipe: a log spool (logs.py) whose one request never
ends while Docker runs. What arrives is spooled to an unlinked temporary
file as for a log, so the daemon's memory does not grow with the stream;
readers see whole lines only (Docker sends one JSON object and a newline
per event).

A reader who stops reading must not cost without bound: once MAX_UNREAD
bytes have arrived that its reader has not read, the stream is dropped (the
request cancelled) and, after the lines already spooled, the reader gets
DROPPED_MARKER, one JSON line that says so, then EOF. Pausing instead
(leaving Docker's socket unread) would not be honest: Docker skips events
for a subscriber that falls behind, silently. Likewise past MAX_SPOOLED
bytes in all (a reader who reads steadily for days): the marker, then EOF,
and a new open starts afresh.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable

import trio

from dockerfs_fuse.engine.logs import (
    LogSpool,
    LogSpools,
    LogWriter,
    SpoolError,
    TooManyLogs,
)
from dockerfs_fuse.engine.spool import Cancellable
from dockerfs_fuse.model.containers import LIVE, Spec, Special, Unlisted, live_link

# Bytes arrived that the reader has not read yet, at most (see the module doc).
MAX_UNREAD = 4 << 20
# Bytes one open's stream spools in all, at most.
MAX_SPOOLED = 256 << 20
# Opens of `events` at once per engine: each holds a connection to Docker.
MAX_EVENT_STREAMS = 64
# How long an open waits for Docker to answer (and so to subscribe it).
SUBSCRIBE_TIMEOUT = 10.0

DROPPED_MARKER = (
    json.dumps(
        {
            "Type": "dockerfs",
            "Action": "dropped",
            "Reason": "the reader fell behind: events after this line are not shown; "
            "open events again",
        }
    ).encode()
    + b"\n"
)

# start(out) begins one `GET /events` into `out`; the result cancels it.
EventStarter = Callable[[LogWriter], Cancellable]


def top_entries() -> Spec:
    """What the engine view's root holds for events: a link into its
    unlisted `.live/`, so that no walk opens the stream."""
    return {"events": live_link(Special.EVENTS), LIVE: Unlisted({"events": Special.EVENTS})}


class EventWriter(LogWriter):
    """The producer's end of an event spool: shows readers whole lines only,
    and says when Docker answered (the first write, empty)."""

    _answered = False

    def write(self, data: bytes) -> None:
        try:
            self._append(data)
        except OSError as exc:
            raise SpoolError(f"writing the event spool: {exc}") from None
        spool = self._spool
        assert isinstance(spool, EventSpool)
        if not self._answered:
            self._answered = True
            self._post(spool._subscribed)
        end = data.rfind(b"\n")
        if end >= 0:
            self._post(spool._grew, self._offset - (len(data) - end - 1))


class EventSpool(LogSpool):
    """One open's event stream on disk (see the module doc)."""

    _writer_class = EventWriter

    def __init__(self, key: str, start: EventStarter) -> None:
        self.subscribed = trio.Event()
        self.dropped = False
        self._consumed = 0
        self._cut = -1  # where the spooled lines end once dropped
        super().__init__(key, lambda _key, out, _follow: start(out), lambda: False)

    def _subscribed(self) -> None:
        self.subscribed.set()

    def read(self, offset: int, size: int) -> bytes:
        if self.dropped:
            if offset < self._cut:
                return self._read(offset, size, self._cut)
            start = offset - self._cut
            return DROPPED_MARKER[start : start + size]
        data = super().read(offset, size)
        self._consumed = max(self._consumed, offset + len(data))
        return data

    def _grew(self, size: int) -> None:
        if self.dropped:
            return  # the writer may still be writing what came before the cancel
        super()._grew(size)
        if self.size - self._consumed > MAX_UNREAD or self.size > MAX_SPOOLED:
            self._drop()

    def _drop(self) -> None:
        self.dropped = True
        self._cut = self.size
        self.size += len(DROPPED_MARKER)
        if self._request is not None:
            self._request.cancel()
        # What the cancelled request still reports is no one's now.
        self._writer = self._request = None
        self.history_done = True
        self.subscribed.set()
        self._wake()

    def _finished(self, writer: LogWriter, error: Exception | None) -> None:
        super()._finished(writer, error)
        self.subscribed.set()  # an open waiting for Docker's answer has it


class EventStreams(LogSpools):
    """One engine's open event streams: a spool per open, at most `limit`."""

    def __init__(self, start: EventStarter, limit: int = MAX_EVENT_STREAMS) -> None:
        super().__init__(lambda _key, _out, _follow: start(_out), lambda _key: False, limit)
        self._start_events = start
        self._numbers = itertools.count()

    def open(self, cid: str = "events") -> EventSpool:
        """A new stream of its own. Raises TooManyLogs."""
        if len(self._spools) >= self._limit:
            raise TooManyLogs(f"{self._limit} event streams are open already")
        key = f"{cid}-{next(self._numbers)}"
        spool = EventSpool(key, self._start_events)
        self._spools[key] = spool
        spool.handles += 1
        return spool
