"""Archive spools: one archive request's tar, parsed as it streams.

A request for a path's archive (`GET /containers/{id}/archive?path=P`)
streams a tar; an ArchiveWriter, on the Docker client's thread, parses it as
it arrives (model/tar.py), writes the bodies it keeps to the spool's file and
hands the entries to trio in batches; the ArchiveSpool, on trio, indexes
them by path. Which spool answers what is files.py's policy.
"""

from __future__ import annotations

import enum
import logging
import posixpath
import stat
import threading
from collections.abc import Callable

from dockerfs_fuse.engine.spool import Cancellable, Spool, SpoolWriter
from dockerfs_fuse.model.files import Entry, covers, entry_of, member_path
from dockerfs_fuse.model.tar import (
    CONTIGUOUS,
    DIRECTORY,
    HARDLINK,
    REGULAR,
    Member,
    TarError,
    TarReader,
)

log = logging.getLogger(__name__)

# Bodies a snapshot keeps, on disk in $TMPDIR: every file, of any size, while
# the snapshot holds at most SPOOL_TOTAL_MAX in all. A walk's request carries
# every byte of the subtree anyway (as `docker export` does), so keeping large
# bodies too spares a copying walk (`tar -c`, `cp -r`) a second transfer of
# each; a file beyond the budget is fetched by itself when opened.
SPOOL_TOTAL_MAX = 256 << 20
# A probe of a regular file keeps its body up to this size.
PROBE_BODY_MAX = 64 << 10
# A probe of a directory reads on while its tar stays within these bounds:
# a small directory (/etc) then comes whole in the request its lookup paid
# for, and the lookup of a name in it that follows (a path walked, `sed -i`
# opening a file) is answered without another request (~50 ms each). A
# bigger one is dropped there, a probe as of any other path.
PROBE_DIR_ENTRIES = 256
PROBE_DIR_BYTES = 256 << 10
# Entries a snapshot indexes; beyond, only the directory it was taken for.
INDEX_MAX = 100_000


class ArchiveError(Exception):
    """The archive could not be read or spooled (a bad tar, a full disk)."""


class Fetch(enum.Enum):
    """What an archive request is for."""

    LISTING = "listing"  # a subtree, indexed, small bodies kept
    PROBE = "probe"  # one path's header (and a small file's body, or a small directory)
    FILE = "file"  # one file's whole body, for one open


# start(cid, path, out) begins `GET /containers/{cid}/archive?path=...`, feeding
# the tar to out.write and ending with out.finish(); the result cancels it.
ArchiveStarter = Callable[[str, str, "ArchiveWriter"], Cancellable]


class ArchiveWriter(SpoolWriter):
    """The producer's end of an archive spool (a docker.sinks.ArchiveSink).

    It parses the tar as it arrives, writes the bodies it keeps, and hands
    entries to trio in batches.
    """

    def __init__(self, spool: ArchiveSpool, fd: int) -> None:
        super().__init__(fd)
        self._spool = spool
        self._kind = spool.kind
        self._request = spool.path
        self._reader = TarReader(self)
        self._spooled_total = 0
        self._spooling = False
        self._batch: list[Entry] = []
        self._count = 0
        self._truncated = False
        self._dir_probe = False  # a probe of a directory, reading on while small
        self._probe_bytes = 0  # the sizes of its members so far
        self._posted = (0, False)
        # Parsed, not yet taken by trio (see _flush): guarded by _lock.
        self._lock = threading.Lock()
        self._pending: list[Entry] = []
        self._pending_state = (0, False)
        self._scheduled = False
        # Regular files by path, for the hard links that name them later.
        self._regular: dict[str, Entry] = {}

    # -- called by the Docker client -------------------------------------------

    def write(self, data: bytes) -> bool:
        """Feed bytes of the response; False once no more are wanted."""
        try:
            self._reader.feed(data)
        except OSError as exc:
            raise ArchiveError(f"writing the spool: {exc}") from None
        except TarError as exc:
            raise ArchiveError(str(exc)) from None
        self._flush()
        return not self._reader.done

    def finish(self, error: Exception | None) -> None:
        """The request ended: normally (error None) or with the reason."""
        if error is None:
            try:
                self._reader.finish()
            except TarError as exc:
                error = ArchiveError(str(exc))
        self._flush()
        self._post(self._spool._finished, self, error)

    # -- the tar reader's sink --------------------------------------------------

    def member(self, m: Member) -> bool:
        self._spooling = False
        if self._kind is not Fetch.LISTING and self._count and not self._dir_probe:
            return False  # a probe or a file wants the first member only
        if self._dir_probe and (
            self._count >= PROBE_DIR_ENTRIES or self._probe_bytes + m.size > PROBE_DIR_BYTES
        ):
            self._truncated = True  # not whole: a probe of the directory only
            self._flush()
            return False
        path = member_path(self._request, m.name)
        if path is None:
            return True
        if self._kind is Fetch.PROBE and not self._count:
            self._dir_probe = m.type == DIRECTORY and path == self._request
        self._probe_bytes += m.size
        if self._count >= INDEX_MAX and posixpath.dirname(path) != self._request:
            self._truncated = True
            return True
        keep = self._keep_body(m)
        entry = self._entry(m, path, self._offset if keep else -1)
        if entry is None:
            return True
        self._spooling = keep
        if keep:
            self._spooled_total += m.size
            self._regular[path] = entry
        elif entry.is_regular and m.type != HARDLINK and self._count < INDEX_MAX:
            self._regular[path] = entry
        self._batch.append(entry)
        self._count += 1
        if self._kind is Fetch.PROBE and not self._dir_probe:
            return keep  # a small file's body, for the open that follows; else done
        return True

    def body(self, data: memoryview) -> None:
        if self._spooling:
            self._append(data)

    # -- internals ---------------------------------------------------------------

    def _keep_body(self, m: Member) -> bool:
        if m.type not in (REGULAR, CONTIGUOUS):
            return False
        if self._kind is Fetch.FILE:
            return True
        if self._kind is Fetch.PROBE:
            return m.size <= PROBE_BODY_MAX
        return self._spooled_total + m.size <= SPOOL_TOTAL_MAX

    def _entry(self, m: Member, path: str, body: int) -> Entry | None:
        if m.type != HARDLINK:
            return entry_of(m, path, body)
        # A hard link is the file it links to, seen earlier in this tar.
        target_path = member_path(self._request, m.linkname)
        target = self._regular.get(target_path) if target_path else None
        entry = entry_of(m, path)
        if entry is None or target is None:
            return entry  # unknown size: opening it fetches it by its own name
        return Entry(
            path=path,
            mode=stat.S_IFREG | (target.mode & 0o7777),
            uid=target.uid,
            gid=target.gid,
            size=target.size,
            mtime=target.mtime,
            body=target.body,
        )

    def _flush(self) -> None:
        """Hand what was parsed to trio, coalesced: while one hand-over waits to
        run there, later ones join it (each wakes trio with a syscall)."""
        state = (self._offset, self._truncated)
        if not self._batch and state == self._posted:
            return
        with self._lock:
            self._pending.extend(self._batch)
            self._pending_state = state
            scheduled, self._scheduled = self._scheduled, True
        self._batch = []
        self._posted = state
        if not scheduled:
            self._post(self._spool._grew, self)

    def take(self) -> tuple[list[Entry], int, bool]:
        """What was parsed since the last take (called on trio by the spool)."""
        with self._lock:
            entries, self._pending = self._pending, []
            self._scheduled = False
            return entries, *self._pending_state


class ArchiveSpool(Spool):
    """One archive request's result: entries as they arrive, bodies on disk.
    Freed in close(): when retired and unread, or by the last reader."""

    def __init__(
        self,
        cid: str,
        path: str,
        kind: Fetch,
        start: ArchiveStarter,
        now: float,
        on_done: Callable[[ArchiveSpool], None] = lambda spool: None,
    ) -> None:
        super().__init__(prefix="dockerfs-root-")
        self.cid = cid
        self.path = path
        self.kind = kind
        self.entries: dict[str, Entry] = {}
        # Each directory's children by name, in the tar's order.
        self.children: dict[str, dict[str, None]] = {}
        self.spooled = 0
        self.truncated = False
        self.done = False
        self.error: Exception | None = None
        self.claimed: set[str] = set()
        # What newer requests have said since: subtrees listed anew, paths found gone.
        self.superseded: list[str] = []
        self.gone: set[str] = set()
        # Single paths we changed ourselves since (engine/files.py's wrote).
        self.stale: set[str] = set()
        self.started = self.last_used = now
        self.ended: float | None = None  # when its request finished (engine/files.py)
        self.readers = 0
        self.waiters = 0
        self.retired = False
        self._on_done = on_done
        self._writer: ArchiveWriter | None = ArchiveWriter(self, self._writer_fd())
        try:
            self._request = start(cid, path, self._writer)
        except Exception as exc:
            self._writer.close()
            self._finished(self._writer, exc)

    def first(self) -> Entry | None:
        return self.entries.get(self.path) or next(iter(self.entries.values()), None)

    def listing(self, path: str) -> list[Entry] | None:
        """A directory's entries, if this snapshot holds the whole listing."""
        if not self.done or self.error is not None or not self.lists:
            return None
        if self.truncated and path != self.path:
            return None
        entry = self.entries.get(path)
        if entry is None or not entry.is_dir:
            return None
        names = self.children.get(path, {})
        return [self.entries[posixpath.join(path, name)] for name in names]

    @property
    def lists(self) -> bool:
        """A listing's snapshot, or a probe of a directory that came whole."""
        if self.kind is Fetch.LISTING:
            return True
        return self.done and self.error is None and self.whole_dir_probe

    @property
    def whole_dir_probe(self) -> bool:
        """A probe of a directory that reads it whole (so far, if not done):
        ArchiveWriter has not found it past its bounds."""
        if self.kind is not Fetch.PROBE or self.truncated:
            return False
        first = self.entries.get(self.path)
        return first is not None and first.is_dir

    def knows_listing_of(self, path: str) -> bool:
        return (
            self.lists
            and covers(self.path, path)
            and not (self.truncated and path != self.path)
            and not self.superseded_at(path)
        )

    def answers_for(self, path: str) -> bool:
        """Whether this snapshot can say if `path` is there (and what it is)."""
        if self.error is not None or self.superseded_at(path):
            return False
        if self.kind is Fetch.PROBE and not self.lists:
            return path == self.path
        return path == self.path or self.knows_listing_of(posixpath.dirname(path))

    def superseded_at(self, path: str) -> bool:
        return (
            path in self.gone
            or path in self.stale
            or any(covers(root, path) for root in self.superseded)
        )

    def read(self, offset: int, size: int) -> bytes:
        return self._read(offset, size, self.spooled)

    def close(self) -> None:
        """Cancel the request if it still runs and free the file."""
        if self.closed:
            return
        self.closed = True
        if not self.done:
            self._finish(ArchiveError("cancelled"))
        self._writer = None
        self._free()

    # -- from the producer (on trio) ---------------------------------------------

    def _grew(self, writer: ArchiveWriter) -> None:
        if self.closed:
            return
        entries, spooled, truncated = writer.take()
        for entry in entries:
            if entry.path not in self.entries and entry.path != self.path:
                parent = posixpath.dirname(entry.path)
                self.children.setdefault(parent, {})[entry.name] = None
            if entry.is_dir:
                self.children.setdefault(entry.path, {})
            self.entries[entry.path] = entry
        self.spooled = max(self.spooled, spooled)
        self.truncated = self.truncated or truncated
        self._wake()

    def _finished(self, writer: ArchiveWriter, error: Exception | None) -> None:
        if self.closed or writer is not self._writer or self.done:
            return
        self._request = None
        self._finish(error)

    def _finish(self, error: Exception | None) -> None:
        self.done = True
        self.error = error
        self._on_done(self)
        self._wake()
