"""A container's own files (`/<id>/root/`), read through Docker's archive endpoint.

The engine has no call that lists one directory. `GET
/containers/{id}/archive?path=P` answers with a tar of P's whole subtree,
and `HEAD` with one path's stat (no owner, and a symlink's target resolved,
not verbatim). Each of those costs the engine a mount and, for a GET, a
process of its own (about 50 ms with dockerd 20.10), so a request per file or
per directory would make `find` take minutes. Instead, tars are read as they
stream (tarstream) into snapshots, and this module decides which snapshot
answers what:

- Opening a directory re-reads it. It is answered by a snapshot in which no
  open of that directory has been answered yet, else by a new snapshot of
  that directory's subtree. A walk (`find`, `tar -c`, `grep -r`, `du`)
  opens each directory once, so the one request made where it starts
  serves all of it; the next `ls` of a directory takes a new snapshot and
  shows what the container wrote since.
- A snapshot serves while it is in use (WALK_IDLE without use ends it) and
  for at most MAX_AGE. A walk that pauses longer (a slow consumer, a starved
  machine) and then goes on in one directory gets that directory
  snapshotted again, not a request per entry: at the third path of it
  looked up by a probe, or the second small file opened by itself, each
  within WALK_IDLE of the end of the one before (so a slow engine does not
  hide the walk).
- Snapshots keep the bodies of regular files (within a budget, see
  SPOOL_TOTAL_MAX), spooled to an unlinked temporary file, so a walk that
  reads files costs no more requests. A body is served once per snapshot
  too: the next open of that file reads it anew.
- A lookup is answered by a live snapshot that lists the name, else by a
  probe: a GET of that one path read up to its first header (and the body
  of a small file, for the open that usually follows), then dropped. A
  symlink the engine refuses to resolve (one that loops) is found in a
  listing of its parent instead.
- A symlink's target is shown so that following it stays in the
  container's root/ (contained_target), wherever root/ is mounted.
- Opening a file that no live snapshot holds streams it: a GET of that path
  whose body is written to its own spool as it arrives, read at the
  reader's offsets, freed at close. Nothing holds a body in memory.

The producers run on the Docker module's thread and write through an
ArchiveWriter, which hands what it parsed to trio; everything else lives on
trio and changes only there.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import posixpath
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import trio

from dockerfs_fuse.model.tar import (
    BLOCKDEV,
    CHAR,
    CONTIGUOUS,
    DIRECTORY,
    FIFO,
    HARDLINK,
    REGULAR,
    SYMLINK,
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
# Small files read one by one in one directory are taken as a walk (open()).
WALK_FILE_MAX = 4 << 20
# Paths of one directory probed one after another (stat()): at this one, the
# directory is taken as walked and snapshotted.
WALK_PROBES = 3
# A probe of a regular file keeps its body up to this size.
PROBE_BODY_MAX = 64 << 10
# Entries a snapshot indexes; beyond, only the directory it was taken for.
INDEX_MAX = 100_000
# A snapshot unused this long (seconds) serves no more; nor one this old.
WALK_IDLE = 1.0
# Directories whose last lone fetch is remembered (to see a walk); beyond, all
# are forgotten at once, and a walk under way starts counting again.
WALK_DIRS_KEPT = 1024
MAX_AGE = 600.0
SNAPSHOTS_PER_CONTAINER = 4
# Archive requests in flight at once (each holds one of aiohttp's connections
# to Docker); a new one waits up to STREAM_WAIT for a slot, then ENFILE.
MAX_STREAMS = 12
STREAM_WAIT = 4.0


class PathError(Exception):
    """A request about a path that has an errno answer (not Docker's fault)."""

    errno = errno.EIO


class NotThere(PathError):
    errno = errno.ENOENT


class NotADir(PathError):
    errno = errno.ENOTDIR


class NotAFile(PathError):
    errno = errno.EISDIR


class TooManyStreams(PathError):
    errno = errno.ENFILE


class ArchiveError(Exception):
    """The archive could not be read or spooled (a bad tar, a full disk)."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of the container, as its tar header says."""

    path: str  # absolute in the container, os.fsdecode'd
    mode: int  # st_mode: type and permission bits
    uid: int
    gid: int
    size: int  # a symlink's is its target's length, as lstat says; a directory's 0
    mtime: int  # seconds (tar keeps no more)
    link: bytes = b""  # a symlink's target, as contained_target shows it
    rdev: int = 0
    body: int = -1  # where the content starts in the spool; -1: not spooled

    @property
    def name(self) -> str:
        return posixpath.basename(self.path) or "/"

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_regular(self) -> bool:
        return stat.S_ISREG(self.mode)


_TYPES = {
    REGULAR: stat.S_IFREG,
    CONTIGUOUS: stat.S_IFREG,
    HARDLINK: stat.S_IFREG,
    SYMLINK: stat.S_IFLNK,
    CHAR: stat.S_IFCHR,
    BLOCKDEV: stat.S_IFBLK,
    DIRECTORY: stat.S_IFDIR,
    FIFO: stat.S_IFIFO,
}


def member_path(request: str, name: bytes) -> str | None:
    """Where a member of the tar of `request` is in the container.

    The engines name members relative to the request's parent: a request
    for "/etc" holds "etc", "etc/hosts"; one for "/" holds "/" and "/bin/sh"
    (Docker) or "bin/sh". None for a name outside the request's subtree.
    """
    text = os.fsdecode(name)
    while text.startswith(("/", "./")):
        text = text[2:] if text.startswith("./") else text[1:]
    text = text.rstrip("/")
    if text in ("", "."):
        return request if request == "/" else None
    path = posixpath.normpath(posixpath.join(posixpath.dirname(request), text))
    return path if covers(request, path) else None


def covers(root: str, path: str) -> bool:
    """Whether `path` is `root` or below it."""
    return root == "/" or path == root or path.startswith(root + "/")


def contained_target(path: str, target: bytes) -> bytes:
    """The target a symlink at container path `path` shows: one that leads
    nowhere outside the container's root, wherever root/ is mounted.

    The kernel resolves an absolute target from the reader's root (the
    host's), and `..` at root/ climbs into the mount; Docker resolves a
    container's links within its root (`docker cp`), and the container's own
    kernel takes `..` at `/` as `/`. A relative target that is only `..`
    back to at most root/ and then names is shown verbatim. Any other
    (absolute, or with `..` past the root or after a name, which could be a
    link to the root) is shown as `..` for each directory above the link,
    then the path it names from the container's `/`, its `.` and `..`
    resolved lexically, clamped at `/`. By induction every link then leads
    only down from a directory on the link's own path, within root/.
    """
    depth = path.count("/") - 1
    parts = [p for p in target.split(b"/") if p not in (b"", b".")]
    ups = 0
    while ups < len(parts) and parts[ups] == b"..":
        ups += 1
    if not target.startswith(b"/") and ups <= depth and b".." not in parts[ups:]:
        return target
    names: list[bytes] = []
    if not target.startswith(b"/"):
        names = [os.fsencode(p) for p in path.split("/")[1:-1]]
    for part in parts:
        if part != b"..":
            names.append(part)
        elif names:
            names.pop()
    shown = b"/".join([b".."] * depth + names) or b"."
    return shown + b"/" if target.endswith(b"/") and names else shown


def entry_of(member: Member, path: str, body: int = -1) -> Entry | None:
    """A member as an Entry; None for types that are not files (volume labels...)."""
    kind = _TYPES.get(member.type)
    if kind is None:
        return None
    link = contained_target(path, member.linkname) if kind == stat.S_IFLNK else b""
    size = len(link) if kind == stat.S_IFLNK else member.size if kind == stat.S_IFREG else 0
    rdev = os.makedev(member.devmajor, member.devminor) if member.type in (CHAR, BLOCKDEV) else 0
    return Entry(
        path=path,
        mode=kind | member.mode,
        uid=member.uid,
        gid=member.gid,
        size=size,
        mtime=member.mtime,
        link=link,
        rdev=rdev,
        body=body,
    )


class Kind(enum.Enum):
    LISTING = "listing"  # a subtree, indexed, small bodies kept
    PROBE = "probe"  # one path's header (and a small file's body)
    FILE = "file"  # one file's whole body, for one open


class Cancellable(Protocol):
    def cancel(self) -> bool: ...


# start(cid, path, out) begins `GET /containers/{cid}/archive?path=...`, feeding
# the tar to out.write and ending with out.finish(); the result cancels it.
Starter = Callable[[str, str, "ArchiveWriter"], Cancellable]


class ArchiveWriter:
    """The producer's end of a spool, used from the Docker module's thread.

    It parses the tar as it arrives, writes the bodies it keeps through a
    file descriptor of its own, and hands entries to trio in batches.
    """

    def __init__(self, spool: ArchiveSpool, fd: int) -> None:
        self._spool = spool
        self._fd = fd
        self._kind = spool.kind
        self._request = spool.path
        self._reader = TarReader(self)
        self._offset = 0
        self._spooled_total = 0
        self._spooling = False
        self._batch: list[Entry] = []
        self._count = 0
        self._truncated = False
        self._posted = (0, False)
        # Parsed, not yet taken by trio (see _flush): guarded by _lock.
        self._lock = threading.Lock()
        self._pending: list[Entry] = []
        self._pending_state = (0, False)
        self._scheduled = False
        # Regular files by path, for the hard links that name them later.
        self._regular: dict[str, Entry] = {}
        self._token = trio.lowlevel.current_trio_token()

    # -- called by the Docker module -------------------------------------------

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

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the tar reader's sink --------------------------------------------------

    def member(self, m: Member) -> bool:
        self._spooling = False
        if self._kind is not Kind.LISTING and self._count:
            return False  # a probe or a file wants the first member only
        path = member_path(self._request, m.name)
        if path is None:
            return True
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
        if self._kind is Kind.PROBE:
            return keep  # a small file's body, for the open that follows; else done
        return True

    def body(self, data: memoryview) -> None:
        if not self._spooling:
            return
        while data:
            written = os.pwrite(self._fd, data, self._offset)
            data = data[written:]
            self._offset += written

    # -- internals ---------------------------------------------------------------

    def _keep_body(self, m: Member) -> bool:
        if m.type not in (REGULAR, CONTIGUOUS):
            return False
        if self._kind is Kind.FILE:
            return True
        if self._kind is Kind.PROBE:
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

    def _post(self, fn: Callable[..., None], *args: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # the daemon is exiting
            self._token.run_sync_soon(fn, *args)


class ArchiveSpool:
    """One archive request's result: entries as they arrive, bodies on disk."""

    def __init__(
        self,
        cid: str,
        path: str,
        kind: Kind,
        start: Starter,
        now: float,
        on_done: Callable[[ArchiveSpool], None] = lambda spool: None,
    ) -> None:
        self.cid = cid
        self.path = path
        self.kind = kind
        # Closed in close(): when retired and unread, or by the last reader.
        self._file = tempfile.TemporaryFile(prefix="dockerfs-root-", buffering=0)  # noqa: SIM115
        self._fd = self._file.fileno()
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
        self.started = self.last_used = now
        self.readers = 0
        self.waiters = 0
        self.retired = False
        self.closed = False
        self._on_done = on_done
        self._changed = trio.Event()
        self._writer: ArchiveWriter | None = ArchiveWriter(self, os.dup(self._fd))
        self._request: Cancellable | None = None
        try:
            self._request = start(cid, path, self._writer)
        except Exception as exc:
            self._writer.close()
            self._finished(self._writer, exc)

    def first(self) -> Entry | None:
        return self.entries.get(self.path) or next(iter(self.entries.values()), None)

    def listing(self, path: str) -> list[Entry] | None:
        """A directory's entries, if this snapshot holds the whole listing."""
        if not self.done or self.error is not None or self.kind is not Kind.LISTING:
            return None
        if self.truncated and path != self.path:
            return None
        entry = self.entries.get(path)
        if entry is None or not entry.is_dir:
            return None
        names = self.children.get(path, {})
        return [self.entries[posixpath.join(path, name)] for name in names]

    def knows_listing_of(self, path: str) -> bool:
        return (
            self.kind is Kind.LISTING
            and covers(self.path, path)
            and not (self.truncated and path != self.path)
            and not self.superseded_at(path)
        )

    def answers_for(self, path: str) -> bool:
        """Whether this snapshot can say if `path` is there (and what it is)."""
        if self.error is not None or self.superseded_at(path):
            return False
        if self.kind is Kind.PROBE:
            return path == self.path
        return path == self.path or self.knows_listing_of(posixpath.dirname(path))

    def superseded_at(self, path: str) -> bool:
        return path in self.gone or any(covers(root, path) for root in self.superseded)

    def read(self, offset: int, size: int) -> bytes:
        size = min(size, self.spooled - offset)
        return os.pread(self._fd, size, offset) if size > 0 else b""

    async def changed(self) -> None:
        await self._changed.wait()

    def close(self) -> None:
        """Cancel the request if it still runs and free the file."""
        if self.closed:
            return
        self.closed = True
        if not self.done:
            self._finish(ArchiveError("cancelled"))
        if self._request is not None:
            self._request.cancel()
        self._request = self._writer = None
        self._file.close()
        self._wake()

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

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class FileReader:
    """One open file's content: a body in a spool, read at any offset."""

    def __init__(self, owner: ContainerFiles, spool: ArchiveSpool, entry: Entry) -> None:
        self._owner = owner
        self.spool = spool
        self.entry = entry
        self.closed = False
        spool.readers += 1

    @property
    def cid(self) -> str:
        return self.spool.cid

    def available(self, offset: int, size: int) -> bool:
        """Whether read(offset, size) would answer without waiting."""
        end = min(offset + size, self.entry.size)
        return offset >= end or self.spool.spooled >= self.entry.body + end

    async def read(self, offset: int, size: int) -> bytes:
        """Bytes at `offset`, waiting for them if they are still on their way."""
        spool, entry = self.spool, self.entry
        end = min(offset + size, entry.size)
        if offset >= end:
            return b""
        while spool.spooled < entry.body + end:
            if self.closed or spool.closed:
                raise ArchiveError("closed")
            if spool.done:
                raise spool.error or ArchiveError(f"{entry.path}: the archive ended early")
            await spool.changed()
        return spool.read(entry.body + offset, end - offset)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._owner._release(self.spool)


class ContainerFiles:
    """Every container's snapshots, and the rules for which one answers (see the module doc)."""

    def __init__(
        self,
        start: Starter,
        streams: int = MAX_STREAMS,
        is_gone: Callable[[Exception], bool] = lambda exc: isinstance(exc, NotThere),
        is_refused: Callable[[Exception], bool] = lambda exc: False,
    ) -> None:
        self._start = start
        # Idleness and age on the clock the sweeper sleeps on: trio's (a test's MockClock).
        self._clock = trio.current_time
        # Which request errors mean "not there" (the engine's 404), as opposed to trouble.
        self._is_gone = is_gone
        # Which mean the engine answered but would not serve that one path (see stat).
        self._is_refused = is_refused
        self._snapshots: dict[str, list[ArchiveSpool]] = {}
        self._limiter = trio.CapacityLimiter(streams)
        self._sweeping = False
        # Per (container, directory): the last path of it fetched by itself (a
        # probe, a file), how many were in a row, when that fetch ended.
        self._alone: dict[tuple[str, str], tuple[str, int, float]] = {}
        self.requests: dict[str, int] = {kind.value: 0 for kind in Kind}

    # -- what the FUSE layer asks --------------------------------------------------

    def listing_now(self, cid: str, path: str) -> list[Entry] | None:
        """listing() when a finished snapshot answers it (a walk): no waiting."""
        self._prune()
        shared = self._claimable(cid, path)
        if shared is None or not shared.done:
            return None
        entries = shared.listing(path)
        if entries is not None:
            shared.claimed.add(path)
            shared.last_used = self._clock()
        return entries

    async def listing(self, cid: str, path: str) -> list[Entry]:
        """A directory's entries for one open of it. Raises NotThere, NotADir."""
        self._prune()
        shared = self._claimable(cid, path)
        if shared is not None:
            shared.claimed.add(path)
            try:
                await self._wait(shared, lambda: shared.done)
                entries = shared.listing(path)
                if entries is not None:
                    return entries
            except Exception as exc:  # whatever went wrong there, ask ourselves
                log.debug(
                    "%s: %s: a shared snapshot failed (%r); asking alone", cid[:12], path, exc
                )
        # No snapshot had it, or that one failed, was cut short, or did not
        # hold the path (new since it was taken): a snapshot of its own.
        spool = await self._snapshot(cid, path, Kind.LISTING)
        spool.claimed.add(path)
        await self._wait(spool, lambda: spool.done)
        if spool.error is not None:
            raise spool.error
        entries = spool.listing(path)
        if entries is None:
            raise NotADir(path) if path in spool.entries else NotThere(path)
        return entries

    async def stat(self, cid: str, path: str) -> Entry:
        """One path's entry (a lookup). Raises NotThere."""
        self._prune()
        for spool in self._candidates(cid, path):
            entry = spool.entries.get(path)
            if spool.done and entry is not None:
                spool.last_used = self._clock()
                return entry
        if path == "/":
            return await self._probe(cid, path)
        in_a_row = self._alone_count(cid, path)
        try:
            if in_a_row >= WALK_PROBES:
                entry = await self._stat_by_listing(cid, path)
                if entry is not None:
                    return entry
            return await self._probe(cid, path)
        finally:
            self._fetched_alone(cid, path, in_a_row)

    async def _probe(self, cid: str, path: str) -> Entry:
        """One path's entry by a request of its own (see stat)."""
        probe = await self._snapshot(cid, path, Kind.PROBE)
        await self._wait(probe, lambda: bool(probe.entries) or probe.done)
        entry = probe.entries.get(path)
        if entry is not None:
            return entry
        error = probe.error or NotThere(path)
        if path == "/" or self._is_gone(error) or not self._is_refused(error):
            raise error
        # Docker resolves a link it is asked for by name, and refuses one that
        # loops (500, "too many links"); its parent's tar describes the link
        # itself. That listing serves on as a snapshot, as any other.
        listing = await self._snapshot(cid, posixpath.dirname(path), Kind.LISTING)
        await self._wait(listing, lambda: path in listing.entries or listing.done)
        entry = listing.entries.get(path)
        if entry is None:
            raise listing.error or NotThere(path)
        return entry

    async def _stat_by_listing(self, cid: str, path: str) -> Entry | None:
        """A lookup in a directory being walked that no snapshot knows (it
        expired): answered by a snapshot of that directory (the one still
        arriving, else a new one) as soon as the path arrives in it. None when
        a finished live one does not hold it (it may be new: a probe asks), or
        that snapshot cannot say (it failed)."""
        parent = posixpath.dirname(path)
        listing = next((s for s in self._live(cid) if s.knows_listing_of(parent)), None)
        if listing is None:
            listing = await self._snapshot(cid, parent, Kind.LISTING)
        elif listing.done:
            return None
        await self._wait(listing, lambda: path in listing.entries or listing.done)
        entry = listing.entries.get(path)
        if entry is not None:
            return entry
        if listing.error is None and listing.listing(parent) is not None:
            raise NotThere(path)  # the whole directory came, without it
        if listing.error is not None and self._is_gone(listing.error):
            raise NotThere(path)  # nor its directory
        return None

    def open_now(self, cid: str, path: str) -> FileReader | None:
        """The content of a file that a live snapshot holds and has not served yet."""
        self._prune()
        for spool in self._candidates(cid, path):
            if path in spool.claimed:
                continue
            entry = spool.entries.get(path)
            if entry is not None and entry.is_regular and entry.body >= 0:
                spool.claimed.add(path)
                spool.last_used = self._clock()
                return FileReader(self, spool, entry)
        return None

    async def open(self, cid: str, path: str, size_hint: int = -1) -> FileReader:
        """A regular file's content for one open. Raises NotThere, NotAFile.

        `size_hint` is the size last seen, if any: small files read one after
        another in one directory are taken as a walk (see the module doc).
        """
        reader = self.open_now(cid, path)
        if reader is not None:
            return reader
        in_a_row = self._alone_count(cid, path)
        try:
            if 0 <= size_hint <= WALK_FILE_MAX and in_a_row >= 2:
                try:
                    await self.listing(cid, posixpath.dirname(path))
                    reader = self.open_now(cid, path)
                    if reader is not None:
                        return reader
                except Exception as exc:  # the file by itself, then
                    log.debug(
                        "%s: %s: its directory failed (%r); asking alone", cid[:12], path, exc
                    )
            return await self._open_alone(cid, path)
        finally:
            self._fetched_alone(cid, path, in_a_row)

    async def _open_alone(self, cid: str, path: str) -> FileReader:
        """A file's content by a request of its own (see open)."""
        spool = await self._snapshot(cid, path, Kind.FILE)
        try:
            await self._wait(spool, lambda: bool(spool.entries) or spool.done)
            entry = spool.first()
            if entry is None:
                raise spool.error or NotThere(path)
            if not entry.is_regular:
                raise NotAFile(path) if entry.is_dir else NotThere(path)
        except BaseException:
            spool.close()
            raise
        return FileReader(self, spool, entry)

    def _alone_count(self, cid: str, path: str) -> int:
        """How many paths of `path`'s directory, `path` included, have been
        fetched by themselves in a row, each within WALK_IDLE of the end of the
        fetch before: a walk, if more than one (however slow the engine)."""
        last = self._alone.get((cid, posixpath.dirname(path)))
        if last is None or self._clock() - last[2] > WALK_IDLE:
            return 1
        return last[1] + (last[0] != path)

    def _fetched_alone(self, cid: str, path: str, in_a_row: int) -> None:
        if len(self._alone) > WALK_DIRS_KEPT:
            self._alone.clear()
        self._alone[(cid, posixpath.dirname(path))] = (path, in_a_row, self._clock())

    def touch(self, cid: str) -> None:
        """The container's files are being read: its snapshots serve on."""
        now = self._clock()
        for spool in self._snapshots.get(cid, ()):
            spool.last_used = now

    def forget(self, cid: str) -> None:
        """The container is gone: drop its snapshots (readers keep theirs)."""
        for spool in self._snapshots.pop(cid, []):
            self._retire(spool)

    def stats(self) -> dict[str, object]:
        return {
            "snapshots": sum(len(s) for s in self._snapshots.values()),
            "streams": self._limiter.borrowed_tokens,
            "requests": dict(self.requests),
        }

    # -- internals ---------------------------------------------------------------------

    def _live(self, cid: str) -> Iterator[ArchiveSpool]:
        """The container's snapshots that may still answer, newest first."""
        return reversed([s for s in self._snapshots.get(cid, ()) if not s.retired])

    def _claimable(self, cid: str, path: str) -> ArchiveSpool | None:
        for spool in self._candidates(cid, path):
            if path in spool.claimed or not spool.knows_listing_of(path):
                continue
            if spool.done and spool.listing(path) is None:
                return None  # not a directory there (any more)
            return spool
        return None

    def _candidates(self, cid: str, path: str) -> Iterator[ArchiveSpool]:
        """Live snapshots that can answer for `path`, newest first, up to the
        first finished one that says it is not there: newer news wins."""
        for spool in self._live(cid):
            if not spool.answers_for(path):
                continue
            if spool.done and path not in spool.entries:
                return
            yield spool

    async def _snapshot(self, cid: str, path: str, kind: Kind) -> ArchiveSpool:
        token = object()
        try:
            with trio.fail_after(STREAM_WAIT):
                await self._limiter.acquire_on_behalf_of(token)
        except trio.TooSlowError:
            busy = f"{self._limiter.total_tokens} archive requests in flight"
            raise TooManyStreams(busy) from None
        self.requests[kind.value] += 1
        try:
            spool = ArchiveSpool(
                cid,
                path,
                kind,
                self._start,
                self._clock(),
                on_done=lambda spool: self._finished(spool, token),
            )
        except BaseException as exc:  # no spool file (a full $TMPDIR, no descriptors left)
            self._limiter.release_on_behalf_of(token)
            if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
                # The daemon's descriptors ran out, not the reader's: ENFILE.
                raise TooManyStreams(f"no spool file: {exc}") from None
            if isinstance(exc, OSError):
                raise ArchiveError(f"no spool file: {exc}") from None
            raise
        if kind is not Kind.FILE:
            spools = self._snapshots.setdefault(cid, [])
            spools.append(spool)
            while len(spools) > SNAPSHOTS_PER_CONTAINER:
                self._retire(spools.pop(0))
            self._start_sweeper()
        return spool

    def _finished(self, spool: ArchiveSpool, token: object) -> None:
        """A request ended: its slot is free, and what it learnt overrides older snapshots."""
        self._limiter.release_on_behalf_of(token)
        newer_news = spool.error is None or self._is_gone(spool.error)
        if spool.kind is Kind.PROBE or not newer_news:
            return
        for other in self._snapshots.get(spool.cid, ()):
            if other is spool or other.started > spool.started:
                continue
            if spool.kind is Kind.LISTING:
                other.superseded.append(spool.path)
            elif spool.error is not None:
                other.gone.add(spool.path)  # a file found gone

    async def _wait(self, spool: ArchiveSpool, ready: Callable[[], bool]) -> None:
        spool.waiters += 1
        try:
            while not ready():
                if spool.closed:
                    raise spool.error or ArchiveError("closed")
                await spool.changed()
        except trio.Cancelled:
            # The reader gave up (a signal): a request nobody waits for stops.
            if spool.waiters == 1 and spool.readers == 0 and not spool.done:
                self._retire(spool)
                spool.close()
            raise
        finally:
            spool.waiters -= 1
            spool.last_used = self._clock()

    def _release(self, spool: ArchiveSpool) -> None:
        spool.readers -= 1
        if spool.readers <= 0 and (spool.kind is Kind.FILE or spool.retired):
            spool.close()

    def _retire(self, spool: ArchiveSpool) -> None:
        spool.retired = True
        if spool.readers <= 0 and spool.waiters <= 0:
            spool.close()

    def _prune(self) -> None:
        now = self._clock()
        for cid, spools in list(self._snapshots.items()):
            keep = []
            for spool in spools:
                idle = now - spool.last_used > WALK_IDLE and spool.waiters == 0
                if spool.error is not None or idle or now - spool.started > MAX_AGE:
                    self._retire(spool)
                else:
                    keep.append(spool)
            if keep:
                self._snapshots[cid] = keep
            else:
                del self._snapshots[cid]

    def _start_sweeper(self) -> None:
        if not self._sweeping:
            self._sweeping = True
            trio.lowlevel.spawn_system_task(self._sweep, name="root snapshot sweeper")

    async def _sweep(self) -> None:
        """Free snapshots nobody uses, even when nothing else asks."""
        try:
            while self._snapshots:
                await trio.sleep(WALK_IDLE)
                self._prune()
        except Exception:  # a bug here must not end the daemon
            log.exception("root snapshot sweeper")
        finally:
            self._sweeping = False
