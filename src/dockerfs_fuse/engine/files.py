"""A container's own files (`/<id>/root/`), read through Docker's archive endpoint.

The engine has no call that lists one directory. `GET
/containers/{id}/archive?path=P` answers with a tar of P's whole subtree,
and `HEAD` with one path's stat (no owner, and a symlink's target resolved,
not verbatim). Each of those costs the engine a mount and, for a GET, a
process of its own (about 50 ms with dockerd 20.10), so a request per file or
per directory would make `find` take minutes. Instead, tars are read as they
stream into snapshots (archive.py), and this module decides which snapshot
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
  listing of its parent instead. A probe of a small directory reads it
  whole (archive.py) and answers for the paths under it only within
  WALK_IDLE of its end, whatever reads or lookups follow, and never for the
  content a write starts from (a write's content is as of its open).
- A symlink's target is shown so that following it stays in the
  container's root/ (contained_target), wherever root/ is mounted.
- Opening a file that no live snapshot holds streams it: a GET of that path
  whose body is written to its own spool as it arrives, read at the
  reader's offsets, freed at close. Nothing holds a body in memory.

The producers run on the Docker client's thread and write through an
ArchiveWriter (archive.py), which hands what it parsed to trio; everything
else lives on trio and changes only there.
"""

from __future__ import annotations

import errno
import logging
import posixpath
from collections.abc import Callable, Iterator

import trio

from dockerfs_fuse.engine.archive import (
    ArchiveError,
    ArchiveSpool,
    ArchiveStarter,
    Fetch,
)
from dockerfs_fuse.model.files import Entry, NotADir, NotAFile, NotThere, TooManyStreams

log = logging.getLogger(__name__)

# Small files read one by one in one directory are taken as a walk (open()).
WALK_FILE_MAX = 4 << 20
# Paths of one directory probed one after another (stat()): at this one, the
# directory is taken as walked and snapshotted.
WALK_PROBES = 3
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
        start: ArchiveStarter,
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
        self._snapshots_taken = trio.Event()  # wakes run_sweeper
        # Per (container, directory): the last path of it fetched by itself (a
        # probe, a file), how many were in a row, when that fetch ended.
        self._alone: dict[tuple[str, str], tuple[str, int, float]] = {}
        self.requests: dict[str, int] = {kind.value: 0 for kind in Fetch}

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
        spool = await self._snapshot(cid, path, Fetch.LISTING)
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
        arriving = self._arriving_dir_probe(cid, path)
        if arriving is not None:
            # A probe of its directory still reading on (archive.py): the
            # name is in it, or the directory came whole without it, in
            # less time than a probe of its own would take.
            await self._wait(arriving, lambda: path in arriving.entries or arriving.done)
            entry = arriving.entries.get(path)
            if entry is not None and not arriving.superseded_at(path):
                arriving.last_used = self._clock()
                return entry
        in_a_row = self._alone_count(cid, path)
        try:
            if in_a_row >= WALK_PROBES:
                entry = await self._stat_by_listing(cid, path)
                if entry is not None:
                    return entry
            return await self._probe(cid, path)
        except Exception as exc:
            if self._is_gone(exc):
                # A walk looks up names it was just shown; a name not there
                # is one about to be made (`tar -x`, `cp -r`: a lookup before
                # each create), which a listing of its directory would not
                # answer: the next lookup there starts counting again.
                self._alone.pop((cid, posixpath.dirname(path)), None)
                in_a_row = 0
            raise
        finally:
            if in_a_row:
                self._fetched_alone(cid, path, in_a_row)

    def _arriving_dir_probe(self, cid: str, path: str) -> ArchiveSpool | None:
        """A live probe of `path`'s directory that is still reading it."""
        if path == "/":
            return None
        parent = posixpath.dirname(path)
        for spool in self._live(cid):
            if not spool.done and spool.path == parent and spool.whole_dir_probe:
                return spool
        return None

    async def _probe(self, cid: str, path: str) -> Entry:
        """One path's entry by a request of its own (see stat)."""
        probe = await self._snapshot(cid, path, Fetch.PROBE)
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
        listing = await self._snapshot(cid, posixpath.dirname(path), Fetch.LISTING)
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
        now = self._clock()
        listing = next(
            (
                s
                for s in self._live(cid)
                if s.knows_listing_of(parent) and self._speaks_for(s, path, now)
            ),
            None,
        )
        if listing is None:
            listing = await self._snapshot(cid, parent, Fetch.LISTING)
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

    def open_now(self, cid: str, path: str, to_change: bool = False) -> FileReader | None:
        """The content of a file that a live snapshot holds and has not served
        yet. `to_change`: the content a change starts from (engine/writes.py),
        never a directory probe's, which a lookup took in passing."""
        self._prune()
        arriving = None if to_change else self._arriving_dir_probe(cid, path)
        spools = [*([arriving] if arriving is not None else []), *self._candidates(cid, path)]
        for spool in spools:
            if to_change and spool.kind is Fetch.PROBE and spool.path != path:
                continue
            if path in spool.claimed or spool.superseded_at(path):
                continue
            entry = spool.entries.get(path)
            if entry is not None and entry.is_regular and entry.body >= 0:
                spool.claimed.add(path)
                spool.last_used = self._clock()
                return FileReader(self, spool, entry)
        return None

    async def open(
        self, cid: str, path: str, size_hint: int = -1, to_change: bool = False
    ) -> FileReader:
        """A regular file's content for one open. Raises NotThere, NotAFile.

        `size_hint` is the size last seen, if any: small files read one after
        another in one directory are taken as a walk (see the module doc).
        `to_change`: see open_now.
        """
        reader = self.open_now(cid, path, to_change)
        if reader is not None:
            return reader
        in_a_row = self._alone_count(cid, path)
        try:
            if 0 <= size_hint <= WALK_FILE_MAX and in_a_row >= 2:
                try:
                    await self.listing(cid, posixpath.dirname(path))
                    reader = self.open_now(cid, path, to_change)
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
        spool = await self._snapshot(cid, path, Fetch.FILE)
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

    def changed(self, cid: str, path: str) -> None:
        """We changed the subtree at `path` (a write through root/): the
        container's snapshots no longer answer for it; the rest still serve."""
        for spool in self._snapshots.get(cid, ()):
            spool.superseded.append(path)

    def wrote(self, cid: str, path: str) -> None:
        """We added or replaced the one path `path` (an upload): no snapshot
        answers for it or lists its directory any more. A probe answers only
        for its own path: one of a sibling, or of the directory itself (whose
        mtime moved, as a snapshot's may while it serves), still answers."""
        parent = posixpath.dirname(path)
        for spool in self._snapshots.get(cid, ()):
            if spool.kind is Fetch.PROBE:
                spool.stale.add(path)
            else:
                spool.superseded.append(parent)

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
            # A probe of a small directory answers lookups and opens of files,
            # never the open of a directory: a listing is as fresh as its open.
            if spool.kind is not Fetch.LISTING:
                continue
            if path in spool.claimed or not spool.knows_listing_of(path):
                continue
            if spool.done and spool.listing(path) is None:
                return None  # not a directory there (any more)
            return spool
        return None

    def _candidates(self, cid: str, path: str) -> Iterator[ArchiveSpool]:
        """Live snapshots that can answer for `path`, newest first, up to the
        first finished one that says it is not there: newer news wins."""
        now = self._clock()
        for spool in self._live(cid):
            if not spool.answers_for(path) or not self._speaks_for(spool, path, now):
                continue
            if spool.done and path not in spool.entries:
                return
            yield spool

    @staticmethod
    def _speaks_for(spool: ArchiveSpool, path: str, now: float) -> bool:
        """Whether `spool` may still answer for `path` now. A probe of a
        small directory, which a lookup took whole in passing, answers for
        the paths under it only within WALK_IDLE of its end (the lookups and
        open of a path walked, `sed -i`'s): nothing extends that, so no read
        elsewhere in the container keeps old content answering."""
        if spool.kind is not Fetch.PROBE or path == spool.path:
            return True
        return spool.ended is not None and now - spool.ended <= WALK_IDLE

    async def _snapshot(self, cid: str, path: str, kind: Fetch) -> ArchiveSpool:
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
        except OSError as exc:  # no spool file (a full $TMPDIR, no descriptors left)
            self._limiter.release_on_behalf_of(token)
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                # The daemon's descriptors ran out, not the reader's: ENFILE.
                raise TooManyStreams(f"no spool file: {exc}") from None
            raise ArchiveError(f"no spool file: {exc}") from None
        except BaseException:
            self._limiter.release_on_behalf_of(token)
            raise
        if kind is not Fetch.FILE:
            spools = self._snapshots.setdefault(cid, [])
            spools.append(spool)
            while len(spools) > SNAPSHOTS_PER_CONTAINER:
                self._retire(spools.pop(0))
            self._snapshots_taken.set()
        return spool

    def _finished(self, spool: ArchiveSpool, token: object) -> None:
        """A request ended: its slot is free, and what it learnt overrides older snapshots."""
        self._limiter.release_on_behalf_of(token)
        spool.ended = self._clock()
        newer_news = spool.error is None or self._is_gone(spool.error)
        if spool.kind is Fetch.PROBE or not newer_news:
            return
        for other in self._snapshots.get(spool.cid, ()):
            if other is spool or other.started > spool.started:
                continue
            if spool.kind is Fetch.LISTING:
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
        if spool.readers <= 0 and (spool.kind is Fetch.FILE or spool.retired):
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

    async def run_sweeper(self) -> None:
        """Free snapshots nobody uses, even when nothing else asks (a task in
        the main nursery); asleep while there are none."""
        while True:
            await self._snapshots_taken.wait()
            try:
                while self._snapshots:
                    await trio.sleep(WALK_IDLE)
                    self._prune()
            except Exception:  # a bug here must not end the daemon
                log.exception("root snapshot sweeper")
            self._snapshots_taken = trio.Event()
