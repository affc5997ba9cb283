"""The pyfuse3 adapter: kernel requests in, inode-table answers out.

Thin on purpose. The layout lives in `tree`, the numbering in `inodes`, the
engine in `docker_source`; this module holds what only the kernel needs:
attributes and timeouts, directory handles with stable offsets, per-open
snapshots of file contents, errno mapping, and kernel cache invalidation.

Every handler goes through `_guard`, so no exception ever escapes into
pyfuse3 (which would end the main loop): Docker's errors and anything
unexpected become errnos, logged once with the request that failed.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import errno
import functools
import json
import logging
import os
import posixpath
import signal
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from dockerfs_fuse.docker.errors import BadRequest, Conflict, DockerProblem, NotFound
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.archive import ArchiveError
from dockerfs_fuse.engine.containers import ATTR_TIMEOUT, EngineCache, Source
from dockerfs_fuse.engine.files import FileReader
from dockerfs_fuse.engine.logs import LogSpool, LogSpools, SpoolError, TooManyLogs
from dockerfs_fuse.engine.swarm import SwarmCache
from dockerfs_fuse.model.containers import LIVE, NAME_MAX, Special
from dockerfs_fuse.model.ctl import BadCommand, Refusals, parse_command
from dockerfs_fuse.model.files import NotThere, PathError
from dockerfs_fuse.model.inodes import NS, ROOT_INODE, Changes, InodeTable, Kind, Node, owner_dir
from dockerfs_fuse.model.render import render_stats, render_top, render_wait

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# Names and prefixes can move to another container.
ALIAS_TIMEOUT = 1.0
# The target of a container's `ctl`, `logs`... (tree.LIVE): fixed for its life.
_INTO_LIVE = f"{LIVE}/".encode()
# pyfuse3 serves at most MAX_WORKERS requests at once. A logs.follow read can
# block for as long as its container is silent, holding one: opens of
# logs.follow get at most MAX_FOLLOWERS of them (ENFILE beyond), one process at
# most MAX_FOLLOWERS_PER_PROCESS (EMFILE beyond), and each open one blocked
# read at a time (EAGAIN for another; for logs too, whose reads block while
# the log so far loads), so the rest of the mount is always served.
MAX_WORKERS = 512
MAX_FOLLOWERS = 256
MAX_FOLLOWERS_PER_PROCESS = 64
# Invalidation batches waiting for the invalidator; beyond, they are merged (_Backlog).
INVALIDATION_QUEUE = 1000
# A reply that waits for the kernel to be told of changes (_told_kernel) waits
# at most this long: a bound, never reached unless the kernel stalls.
TOLD_KERNEL_WAIT = 5.0
# How often a blocked logs or logs.follow read checks whether its reader was signalled.
FOLLOW_POLL = 0.2
# Containers whose `wait` may be read at once: each read waits on one
# `POST /wait` per container, holding one of aiohttp's connections (ENFILE beyond).
MAX_EXIT_WAITS = 12
# Under a container's root/ the kernel may trust entries and attributes this
# long: the container changes them without telling us.
ROOT_TIMEOUT = 1.0
# A root/ file at least this large may be read through the page cache (see _root_open).
ROOT_PAGED_MIN = 1 << 20
# `getfattr -n user.dockerfs.stats MOUNT`: Docker request counts, for make bench.
STATS_XATTR = b"user.dockerfs.stats"
# readdir offsets start above 2: NFS re-exports treat 1 and 2 specially.
_OFFSET_BASE = 3
# Kernel caching: a listing's offsets carry its snapshot number above this bit,
# in 31 bits, so that an offset stays a positive signed 64-bit off_t.
_SNAPSHOT_SHIFT = 32
_SNAPSHOT_MASK = (1 << 31) - 1
# The block size stat and statfs report: a page.
BLOCK_SIZE = 4096
# Directories under root/ whose last asker is remembered (_note_asker); beyond,
# all are forgotten at once, and such a listing waits on with no signal to end it.
ROOT_ASKERS_KEPT = 4096
_SNAPSHOTS_KEPT = 256


def errno_for(exc: BaseException) -> int:
    """The one place Docker's errors become errnos."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, Conflict):
        return errno.EBUSY
    if isinstance(exc, BadRequest | BadCommand):
        return errno.EINVAL
    if isinstance(exc, PathError):
        return exc.errno
    return errno.EIO  # unreachable engine, any other API error, anything unexpected


def _guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only FUSEError reach pyfuse3; log everything else once."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except PathError as exc:  # ENOENT under root/ and the like: answers, not faults
            log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except (DockerProblem, BadCommand, ArchiveError, SpoolError) as exc:
            log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _fail(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@dataclass(slots=True)
class _DirHandle:
    """A directory listing frozen at opendir, so offsets stay meaningful."""

    entries: list[tuple[str, int]]


@dataclass(slots=True)
class _FileHandle:
    """File contents frozen at open: every read of one open sees one version."""

    data: bytes
    # Kernel caching: the node, whose data may since have moved on (see read).
    node: Node | None = None


@dataclass(slots=True)
class _CtlHandle:
    cache: EngineCache
    cid: str

    @property
    def refusal_key(self) -> tuple[str, ...]:  # see DockerFS._refusal_key
        return (self.cache.name, self.cid)


@dataclass(slots=True)
class _SwarmCtlHandle:
    swarm: SwarmCache
    kind: str
    oid: str

    @property
    def refusal_key(self) -> tuple[str, ...]:
        return (self.swarm.name, self.kind, self.oid)


@dataclass(slots=True)
class _LogHandle:
    """An open `logs` (read at the kernel's offsets, ends where the log so far
    ends) or `logs.follow` (read in order, blocks like a pipe until the
    container stops), both over the container's shared spool."""

    spool: LogSpool
    follow: bool
    opener_pid: int
    opener: int  # the opening process (thread group), for the per-process cap
    spools: LogSpools  # the engine's, which the spool goes back to
    pos: int = 0
    eofs: int = 0
    waiting: bool = False
    closed: bool = False


@dataclass(slots=True)
class _RootFileHandle:
    """An open file under a container's root/: its content, streamed or spooled."""

    reader: FileReader
    opener_pid: int
    cache: EngineCache


class _ExitWait:
    """One `POST /wait` for a container, shared by every reader of its `wait`."""

    def __init__(self, future: Any, on_done: Callable[[], None]) -> None:
        self.future = future
        self.done = trio.Event()
        self.readers = 0
        token = trio.lowlevel.current_trio_token()

        def finished() -> None:
            self.done.set()
            on_done()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished)

        future.add_done_callback(wake)


@dataclass(slots=True)
class _WaitHandle:
    """An open `wait`: blocks at its first read until the container stops."""

    cache: EngineCache
    cid: str
    opener_pid: int
    opener: int  # the opening process, for the follower caps
    shared: _ExitWait | None = None
    data: bytes | None = None
    waiting: bool = False


_Handle = (
    _DirHandle
    | _FileHandle
    | _CtlHandle
    | _SwarmCtlHandle
    | _LogHandle
    | _RootFileHandle
    | _WaitHandle
)


class _Backlog:
    """Invalidations that found the queue full, merged until the invalidator takes them.

    Each entry and inode is held once, so memory grows with what changed
    (bounded by the tree), not with how often it changed.
    """

    def __init__(self) -> None:
        self._removed: dict[tuple[int, str], int] = {}
        self._changed: dict[int, None] = {}  # a dict keeps the order they came in

    def __bool__(self) -> bool:
        return bool(self._removed or self._changed)

    def add(self, changes: Changes) -> None:
        for parent, name, inode in changes.removed:
            self._removed[parent, name] = inode
        self._changed.update(dict.fromkeys(changes.changed))

    def take(self) -> Changes:
        """Everything merged so far, leaving the backlog empty."""
        taken = Changes(
            removed=[(parent, name, inode) for (parent, name), inode in self._removed.items()],
            changed=list(self._changed),
        )
        self._removed, self._changed = {}, {}
        return taken


class _Followers:
    """Open logs.follow handles, counted in total and per process."""

    def __init__(self, total: int, per_process: int) -> None:
        self.total = total
        self.per_process = per_process
        self.by_process: dict[int, int] = {}
        self.count = 0

    def take(self, process: int) -> None:
        if self.count >= self.total:
            raise _fail(errno.ENFILE)
        if self.by_process.get(process, 0) >= self.per_process:
            raise _fail(errno.EMFILE)
        self.count += 1
        self.by_process[process] = self.by_process.get(process, 0) + 1

    def give_back(self, process: int) -> None:
        self.count -= 1
        left = self.by_process.get(process, 0) - 1
        if left > 0:
            self.by_process[process] = left
        else:
            self.by_process.pop(process, None)


class DockerFS(pyfuse3.Operations):
    """The containers of one or more engines as a read-only tree.

    One engine: its containers are the root's children. Several: the root
    holds one directory per engine, each the one-engine tree. Either way each
    engine's `EngineCache` keeps its subtree fresh; this class only answers
    the kernel from the table.
    """

    def __init__(
        self,
        engines: Mapping[str, Source],
        *,
        show_all: bool = False,
        kernel_cache: bool = False,
        swarm: bool = False,
    ) -> None:
        super().__init__()
        if not engines:
            raise ValueError("no engine")
        self.show_all = show_all
        # The pyfuse3 patch (kernel_cache.py): the kernel opens directories
        # itself and caches listings and core files' pages; readdir gets the inode.
        self.kernel_cache = self.pass_inode = kernel_cache
        self._listings: dict[tuple[int, int], list[tuple[str, int]]] = {}
        self.mounted_ns = time.time_ns()
        self.table = InodeTable(root_mtime_ns=self.mounted_ns)
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._handles: dict[int, _Handle] = {}
        self.followers = _Followers(MAX_FOLLOWERS, MAX_FOLLOWERS_PER_PROCESS)
        self.waiting_reads = 0
        self._exit_waits: dict[tuple[str, str], _ExitWait] = {}
        self.refusals = Refusals()  # what each `err` file says
        self._root_askers: dict[int, int] = {}  # see _note_asker
        self._next_fh = 1
        # Changes to push, and markers (_told_kernel) set once all before them are pushed.
        self._inval_send, self._inval_recv = trio.open_memory_channel[Changes | trio.Event](
            INVALIDATION_QUEUE
        )
        self._backlog = _Backlog()
        # The engines, by the inode of their top directory.
        self.several = len(engines) > 1
        self.caches: dict[int, EngineCache] = {}
        # --swarm: each engine's cluster view, by its top directory's inode and
        # by those of its services/, nodes/ and tasks/.
        self.swarms: dict[int, SwarmCache] = {}
        self._swarm_lists: dict[int, SwarmCache] = {}
        for name, source in engines.items():
            top = self.table.add_dir(name) if self.several else self.table.root
            if swarm:
                assert isinstance(source, DockerSource)
                view = SwarmCache(name, source, self.table, top, self._apply)
                self.swarms[top.inode] = view
                self._swarm_lists.update(dict.fromkeys(view.kind_of, view))
                continue
            self.caches[top.inode] = EngineCache(
                name,
                source,
                self.table,
                top,
                self._apply,
                show_all=show_all,
                kernel_cache=kernel_cache,
            )

    # -- the caches' changes, pushed to the kernel ---------------------------------

    def _apply(self, changes: Changes) -> None:
        """Hand kernel invalidations to the background task, never blocking a request.

        A lost invalidation is stale for up to the kernel's timeout (an hour
        with kernel caching), so when the queue is full the batch is merged
        into the backlog, which the invalidator drains after each item.
        """
        try:
            self._inval_send.send_nowait(changes)
        except trio.WouldBlock:
            if not self._backlog:
                log.warning("invalidation queue full; merging invalidations until it drains")
            self._backlog.add(changes)

    async def run_invalidator(self) -> None:
        """Push cache invalidations to the kernel (a task in the main nursery).

        Entry invalidation goes through pyfuse3's own notification thread
        (`invalidate_entry_async`); attribute invalidation is a quick write
        to /dev/fuse, done off the trio thread so a request is never waited on.
        The backlog (filled only while the queue is full, so another item
        always comes) is pushed after each item.
        """
        async for item in self._inval_recv:
            if not isinstance(item, trio.Event):
                await self._push(item)
            if self._backlog:
                await self._push(self._backlog.take())
            if isinstance(item, trio.Event):
                item.set()

    async def _push(self, changes: Changes) -> None:
        for parent, name, _inode in changes.removed:
            try:
                # Not notify_delete (deleted=inode): that fails with
                # ENOTEMPTY for a directory whose children the kernel caches.
                pyfuse3.invalidate_entry_async(parent, os.fsencode(name), ignore_enoent=True)
            except Exception as exc:
                log.debug("invalidate_entry_async(%d, %s): %s", parent, name, exc)
        if changes.changed:
            # Cached pages and listings go too (kernel caching), not only attributes.
            await trio.to_thread.run_sync(
                _invalidate_inodes, changes.changed, not self.kernel_cache
            )

    async def _told_kernel(self) -> None:
        """Wait until what changed so far has been pushed to the kernel, so
        that no read after a reply (a root listing, a ctl write) sees what the
        kernel cached before it: attributes and pages are dropped by then.
        Dropped entries are only queued (pyfuse3's thread drops them): the
        kernel holds a directory's lock while our listing of it is pending.
        """
        told = trio.Event()
        with trio.move_on_after(TOLD_KERNEL_WAIT) as waited:
            await self._inval_send.send(told)
            await told.wait()
        if waited.cancelled_caught:
            log.warning("invalidations not pushed within %gs; replying anyway", TOLD_KERNEL_WAIT)

    async def run_events(self) -> None:
        """Every engine's event stream (a task in the main nursery)."""
        async with trio.open_nursery() as nursery:
            for cache in self.caches.values():
                nursery.start_soon(cache.run_events)
            for view in self.swarms.values():
                nursery.start_soon(view.run_events)

    # -- helpers ------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.table.get(inode)
        except KeyError:
            raise _fail(errno.ENOENT) from None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.entry is not None:
            return self._root_attrs(node)
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        cache = self._cache_of(node)
        timeout = cache.attr_timeout if cache is not None else ATTR_TIMEOUT
        a.entry_timeout = a.attr_timeout = timeout
        if node.inode == ROOT_INODE or node.inode in self.caches:
            a.attr_timeout = min(timeout, ATTR_TIMEOUT)
        if node.kind is Kind.DIR:
            a.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
        elif node.kind is Kind.LINK:
            a.st_mode = pyfuse3.ModeT(stat.S_IFLNK | 0o777)
            if not node.data.startswith(_INTO_LIVE):  # those never lead elsewhere
                a.entry_timeout = a.attr_timeout = ALIAS_TIMEOUT
        elif node.special is Special.CTL:
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o200)
        else:
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
        a.st_nlink = node.nlink
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_size = len(node.data) if node.kind is not Kind.DIR else 0
        owner = owner_dir(node) if node.special is Special.LOGS else None
        if owner is not None:
            logs = cache.logs if cache is not None else self._swarm_logs(node)
            if logs is not None:
                # `tail -f` follows by polling this size: never let the kernel cache it.
                a.st_size = logs.polled_size(owner.name)
                a.attr_timeout = 0
        if node.special is Special.ERR:
            # Changes with every refused write, and nothing invalidates it.
            a.st_size = len(self._refusal_text(node))
            a.attr_timeout = 0
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        if node.inode == ROOT_INODE or node.inode in self.caches or node.inode in self._swarm_lists:
            # With kernel caching each listing moves this mtime on; the ctime
            # stays, since GNU tar takes a directory whose ctime moved while it
            # read it for changed ("file changed as we read it", exit 1).
            a.st_atime_ns = a.st_ctime_ns = self.mounted_ns
        if node.special is Special.ROOT:
            # As for the directories below it (see _root_attrs): tar checks ctime.
            a.st_atime_ns = a.st_ctime_ns = node.mtime_ns // NS * NS
        return a

    def _root_attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        """A path under root/: its type, mode, owner, size and times as the engine says."""
        e = node.entry
        assert e is not None
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = ROOT_TIMEOUT
        a.st_mode = pyfuse3.ModeT(e.mode)
        a.st_nlink = node.nlink
        a.st_uid = e.uid
        a.st_gid = e.gid
        a.st_rdev = e.rdev
        a.st_size = e.size
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (e.size + 511) // 512
        # The mtime carries, below the second, the count of listings that
        # makes the kernel drop a cached one (_list_for_kernel). ctime stays
        # put: GNU tar takes a directory whose ctime moved while it read it for
        # changed ("file changed as we read it", exit 1).
        a.st_mtime_ns = node.mtime_ns
        a.st_atime_ns = a.st_ctime_ns = e.mtime * NS
        return a

    def _new_handle(self, handle: _Handle) -> pyfuse3.FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return pyfuse3.FileHandleT(fh)

    def _cache_of(self, node: Node) -> EngineCache | None:
        """The engine a node belongs to (None for the root of several engines)."""
        n: Node | None = node
        while n is not None:
            cache = self.caches.get(n.inode)
            if cache is not None:
                return cache
            n = n.parent
        return None

    def _swarm_of(self, node: Node) -> SwarmCache | None:
        n: Node | None = node
        while n is not None:
            view = self.swarms.get(n.inode)
            if view is not None:
                return view
            n = n.parent
        return None

    async def _find(self, parent: Node, name: str) -> Node | None:
        view = self._swarm_lists.get(parent.inode)
        if view is not None:
            return await view.find(parent, name)
        if _in_root(parent) and name not in (".", ".."):
            return await self._root_lookup(parent, name)
        cache = self.caches.get(parent.inode)
        if cache is None:  # inside a container, or the root of several engines
            return self.table.lookup(parent, name)
        return await cache.find(name)

    # -- a container's own files (root/) and its exit (wait) ---------------------------

    def _root_path(self, node: Node) -> tuple[EngineCache, str, str]:
        """The engine, container and path in it of a node under root/ (root/ is "/")."""
        parts: list[str] = []
        while node.special is not Special.ROOT:
            if node.parent is None or node.gone:
                raise _fail(errno.ENOENT)
            parts.append(node.name)
            node = node.parent
        cache, cid = self._container_of(node)
        return cache, cid, "/" + "/".join(reversed(parts))

    async def _root_lookup(self, parent: Node, name: str) -> Node | None:
        if len(os.fsencode(name)) > NAME_MAX:
            raise _fail(errno.ENAMETOOLONG)  # no container file has such a name
        cache, cid, path = self._root_path(parent)
        try:
            entry = await cache.files.stat(cid, posixpath.join(path, name))
        except (PathError, NotFound):
            self._apply(self.table.remove_entry(parent, name))
            return None
        node, changes = self.table.set_entry(parent, entry)
        self._apply(changes)
        return node

    async def _root_listing(self, node: Node, pid: int | None) -> list[tuple[str, int]]:
        """Opening a directory under root/ re-reads it (container_fs says from where).

        `pid` is the opener's, so that a signal ends a long wait with EINTR;
        None where nobody is known (readdir with kernel caching: see _note_asker).
        """
        cache, cid, path = self._root_path(node)
        try:
            entries = cache.files.listing_now(cid, path)  # a walk goes on: no request, no wait
            if entries is None:
                if pid is None:
                    entries = await cache.files.listing(cid, path)
                else:
                    entries = await self._interruptible(pid, cache.files.listing, cid, path)
        except (NotThere, NotFound):
            if node.parent is not None and node.entry is not None:
                self._apply(self.table.remove_entry(node.parent, node.name))  # gone
            raise
        self._apply(self.table.set_listing(node, entries))
        children = node.children or {}
        return [(e.name, children[e.name].inode) for e in entries]

    async def _root_open(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        cache, cid, path = self._root_path(node)
        reader = cache.files.open_now(cid, path)
        if reader is None:
            size = node.entry.size if node.entry is not None else -1
            reader = await self._interruptible(pid, cache.files.open, cid, path, size)
        fh = self._new_handle(_RootFileHandle(reader, pid, cache))
        # Never pages cached before this open (keep_cache off). A large file
        # whose size is the one the kernel was told goes through the page
        # cache, so the kernel reads ahead in large pieces (tar asks 10 KiB at
        # a time); any other with direct I/O, never clipped at a stale size.
        told = node.entry.size if node.entry is not None else -1
        paged = reader.entry.size == told and told >= ROOT_PAGED_MIN
        return pyfuse3.FileInfo(fh=fh, direct_io=not paged, keep_cache=False)

    async def _read_root_file(self, h: _RootFileHandle, off: int, size: int) -> bytes:
        h.cache.files.touch(h.reader.cid)
        if h.reader.available(off, size):
            return await h.reader.read(off, size)
        return await self._interruptible(h.opener_pid, h.reader.read, off, size)

    def _open_wait(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        cache, cid = self._container_of(node)
        opener = _process_of(pid)
        self.followers.take(opener)  # a read blocks like logs.follow's: the same caps
        handle = _WaitHandle(cache, cid, pid, opener)
        return pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True, keep_cache=False)

    async def _read_wait(self, h: _WaitHandle, off: int, size: int) -> bytes:
        """The first read blocks until the container is not running; then its exit code."""
        if h.data is None:
            if h.waiting:
                raise _fail(errno.EAGAIN)  # see MAX_FOLLOWERS
            shared = h.shared = h.shared or self._join_exit_wait(h.cache, h.cid)
            h.waiting = True
            self.waiting_reads += 1
            try:
                await self._interruptible(h.opener_pid, shared.done.wait)
            finally:
                h.waiting = False
                self.waiting_reads -= 1
            try:
                code = shared.future.result()
            except concurrent.futures.CancelledError:
                raise _fail(errno.EIO) from None
            h.data = render_wait(code)
        return h.data[off : off + size]

    def _join_exit_wait(self, cache: EngineCache, cid: str) -> _ExitWait:
        key = (cache.name, cid)
        shared = self._exit_waits.get(key)
        if shared is None:
            if len(self._exit_waits) >= MAX_EXIT_WAITS:
                log.warning("wait %s: %d containers waited on already", cid[:12], MAX_EXIT_WAITS)
                raise _fail(errno.ENFILE)

            def done() -> None:
                if self._exit_waits.get(key) is shared:
                    del self._exit_waits[key]

            shared = self._exit_waits[key] = _ExitWait(cache.source.wait(cid), done)
        shared.readers += 1
        return shared

    def _release_wait(self, h: _WaitHandle) -> None:
        self.followers.give_back(h.opener)
        shared, h.shared = h.shared, None
        if shared is None:
            return
        shared.readers -= 1
        if shared.readers <= 0 and not shared.done.is_set():
            shared.future.cancel()  # nobody waits any more: stop asking
            key = (h.cache.name, h.cid)
            if self._exit_waits.get(key) is shared:
                del self._exit_waits[key]

    async def _interruptible(self, pid: int, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
        """Await fn(*args), or answer EINTR once `pid` has a fatal signal pending.

        pyfuse3 cannot see the kernel's INTERRUPT; a shell's Ctrl-C on a slow
        read under root/ or on `wait` must not wait for the engine.
        """
        scope = trio.CancelScope()
        failure: Exception | None = None
        result: list[R] = []

        async def watch() -> None:
            while True:
                await trio.sleep(FOLLOW_POLL)
                if _signal_pending(pid):
                    scope.cancel()
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            try:
                with scope:
                    result.append(await fn(*args))
            except Exception as exc:
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        if not result:
            raise _fail(errno.EINTR)
        return result[0]

    # -- requests ---------------------------------------------------------------------

    @_guard
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise _fail(errno.ENOTDIR)
        node = await self._find(parent, os.fsdecode(name))
        if node is None or node.gone:
            raise _fail(errno.ENOENT)
        self.table.remember(node)
        self._note_asker(node, ctx)
        return self._attrs(node)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        # Not _guard: pyfuse3 lets nothing at all escape forget, not even FUSEError.
        try:
            for inode, count in inode_list:
                self.table.forget(inode, count)
        except Exception:
            log.exception("forget")

    @_guard
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        self._note_asker(node, ctx)
        return self._attrs(node)

    def _note_asker(self, node: Node, ctx: pyfuse3.RequestContext) -> None:
        """With kernel caching readdir comes with no process; a directory under
        root/ is read by the one that last looked it up or stat'ed it (the
        kernel stats a directory before reading it from the start), so that
        its signal can end a long wait."""
        if self.kernel_cache and node.is_dir and _in_root(node):
            if len(self._root_askers) > ROOT_ASKERS_KEPT:
                self._root_askers.clear()
            self._root_askers[node.inode] = ctx.pid

    @_guard
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        node = self._node(inode)
        if node.kind is not Kind.LINK:
            raise _fail(errno.EINVAL)
        return pyfuse3.FileNameT(node.data)

    @_guard
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if self.kernel_cache:
            # The kernel then stops sending OPENDIR and RELEASEDIR and caches
            # every listing; readdir gets the inode (see _list_for_kernel).
            raise _fail(errno.ENOSYS)
        node = self._node(inode)
        if not node.is_dir:
            raise _fail(errno.ENOTDIR)
        if _in_root(node):
            return self._new_handle(_DirHandle(await self._root_listing(node, ctx.pid)))
        cache = self.caches.get(inode)
        if cache is not None:
            # The contract: reading an engine's top directory (the root with
            # one engine) is what refreshes its cache. The root of several
            # engines lists them and asks none.
            await cache.refresh()
            await self._told_kernel()
        view = self._swarm_lists.get(inode)
        if view is not None:  # so does reading services/, nodes/ or tasks/
            await view.refresh_dir(inode)
        entries = [(name, child.inode) for name, child in self.table.listed(node)]
        return self._new_handle(_DirHandle(entries))

    @_guard
    async def readdir(
        self,
        fh: pyfuse3.FileHandleT,
        start_id: int,
        token: pyfuse3.ReaddirToken,
        inode: pyfuse3.InodeT | None = None,
    ) -> None:
        if inode is not None:
            return await self._list_for_kernel(inode, start_id, token)
        handle = self._handles.get(fh)
        if not isinstance(handle, _DirHandle):
            raise _fail(errno.EBADF)
        start = max(0, start_id - _OFFSET_BASE + 1) if start_id else 0
        for index in range(start, len(handle.entries)):
            name, inode = handle.entries[index]
            if inode not in self.table:
                continue  # vanished since opendir and already forgotten
            node = self.table.get(inode)
            if node.gone:
                continue
            try:
                encoded = os.fsencode(name)
                if len(encoded) > NAME_MAX:
                    raise ValueError(f"name of {len(encoded)} bytes")
                attrs = self._attrs(node)
            except Exception as exc:
                # One bad entry must not make its directory unlistable (the
                # tree never makes such a name; this is the last line).
                log.error("readdir: left out %r: %s", name[:80], exc)
                continue
            if not pyfuse3.readdir_reply(token, encoded, attrs, index + _OFFSET_BASE):
                return
            self.table.remember(node)

    async def _list_for_kernel(
        self, inode: pyfuse3.InodeT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        """readdir with kernel caching: no directory handles, the kernel keeps what we list.

        A listing is a snapshot of the directory's entries, numbered by their
        hash: the number rides in the upper bits of every offset, so the later
        pages of one listing are served from the same snapshot without a
        handle, and an unchanged directory always gets the same offsets.
        Reading an engine's top directory (the root with one engine) from its
        start still asks the engine (the contract); its mtime then moves on
        and its cached attributes are dropped, so the kernel's auto_inval_data
        drops the cached listing at the next read: every `ls` asks once.
        """
        node = self._node(inode)
        if not node.is_dir:
            raise _fail(errno.ENOTDIR)
        if start_id == 0:
            cache = self.caches.get(inode)
            if cache is not None:
                await cache.refresh()
                await self._told_kernel()
                top = cache.top
                top.mtime_ns = max(time.time_ns(), top.mtime_ns + 1)
                # Here, not in a worker thread: a thread hop is slower than this
                # write to /dev/fuse, which waits for nothing of ours (no
                # writeback cache), and it must be done before we reply.
                _invalidate_inodes([inode], False)
            view = self._swarm_lists.get(inode)
            if view is not None:
                await view.refresh_dir(inode)
                node.mtime_ns = max(time.time_ns(), node.mtime_ns + 1)
                _invalidate_inodes([inode], False)
            if _in_root(node):
                # The kernel opens no directory here, so every listing it asks
                # for is an open: read it again, and move the directory's mtime
                # on (below the second: tar keeps whole seconds) so the kernel
                # asks again at the next open instead of using what it cached.
                entries = await self._root_listing(node, self._root_askers.get(inode))
                node.mtime_ns = node.mtime_ns // NS * NS + (node.mtime_ns + 1) % NS
                _invalidate_inodes([inode], False)
            else:
                entries = [(name, child.inode) for name, child in self.table.listed(node)]
            snapshot = hash(tuple(entries)) & _SNAPSHOT_MASK
            self._listings.pop((inode, snapshot), None)
            self._listings[inode, snapshot] = entries
            if len(self._listings) > _SNAPSHOTS_KEPT:
                del self._listings[next(iter(self._listings))]
            start = 0
        else:
            snapshot, pos = divmod(start_id, 1 << _SNAPSHOT_SHIFT)
            start = pos - _OFFSET_BASE + 1
            found = self._listings.get((inode, snapshot))
            if found is None:  # long forgotten: the directory as it is now
                found = [(name, child.inode) for name, child in self.table.listed(node)]
            entries = found
        base = snapshot << _SNAPSHOT_SHIFT
        for index in range(start, len(entries)):
            name, child_inode = entries[index]
            child = self.table.get(child_inode) if child_inode in self.table else None
            if child is None or child.gone:
                continue  # vanished since the listing began
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attrs(child), base + index + _OFFSET_BASE
            ):
                return
            self.table.remember(child)

    @_guard
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._handles.pop(fh, None)

    @_guard
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.gone:
            raise _fail(errno.ENOENT)  # the kernel has yet to drop its entry
        if node.is_dir:
            raise _fail(errno.EISDIR)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND)
        if node.entry is not None:
            if writing:
                raise _fail(errno.EROFS)
            return await self._root_open(node, ctx.pid)
        if node.special is Special.CTL:
            if flags & os.O_ACCMODE != os.O_WRONLY:
                raise _fail(errno.EACCES)
            view = self._swarm_of(node)
            if view is not None:
                kind, oid = view.locate(node)
                handle = _SwarmCtlHandle(view, kind, oid)
                return pyfuse3.FileInfo(fh=self._new_handle(handle), direct_io=True)
            cache, cid = self._container_of(node)
            return pyfuse3.FileInfo(fh=self._new_handle(_CtlHandle(cache, cid)), direct_io=True)
        if writing:
            raise _fail(errno.EACCES)
        if node.special is None:
            data = node.data
            if self.kernel_cache:
                # Pages stay cached between opens; every change of the content
                # invalidates them (run_invalidator), so they are never stale.
                fh = self._new_handle(_FileHandle(data, node))
                owner = self._cache_of(node)
                keep = owner is not None and owner.keep_pages
                return pyfuse3.FileInfo(fh=fh, keep_cache=keep)
        elif node.special in (Special.LOGS, Special.FOLLOW):
            return self._open_log(node, ctx.pid)
        elif node.special is Special.WAIT:
            return self._open_wait(node, ctx.pid)
        else:
            data = await self._render(node)
        # Direct I/O: the kernel neither caches pages nor clips reads at a
        # cached size, so `cat` gets exactly this snapshot even when the text
        # (Status, say) changed length since the kernel last saw its size.
        fh = self._new_handle(_FileHandle(data))
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _swarm_logs(self, node: Node) -> LogSpools | None:
        view = self._swarm_of(node)
        return view.logs if view is not None else None

    def _open_log(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        view = self._swarm_of(node)
        if view is not None:
            spools, cid = view.logs, view.log_key(node)
        else:
            cache, cid = self._container_of(node)
            spools = cache.logs
        follow = node.special is Special.FOLLOW
        opener = _process_of(pid)
        if follow:
            self.followers.take(opener)
        try:
            spool = spools.open(cid)
        except BaseException as exc:
            if follow:
                self.followers.give_back(opener)
            if isinstance(exc, TooManyLogs):
                log.warning("open %s/%s: %s", cid[:12], node.name, exc)
                raise _fail(errno.ENFILE) from None
            if isinstance(exc, OSError):  # the spool file could not be made
                log.warning("open %s/%s: the log spool: %s", cid[:12], node.name, exc)
                raise _fail(_spool_errno(exc)) from None
            raise
        if follow:
            spool.want_more()
        fh = self._new_handle(_LogHandle(spool, follow, pid, opener, spools))
        # Direct I/O: reads are never clipped at a size the kernel cached.
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False, nonseekable=follow)

    def _container_of(self, node: Node) -> tuple[EngineCache, str]:
        """The engine and container ID of a node inside a container directory."""
        while node.parent is not None and node.parent.inode not in self.caches:
            node = node.parent
        if node.parent is None or node.gone:
            raise _fail(errno.ENOENT)
        return self.caches[node.parent.inode], node.name

    def _refusal_key(self, node: Node) -> tuple[str, ...]:
        """Whose ctl a node in an object's directory belongs to (its `err`):
        an engine's container, or a Swarm service or node."""
        view = self._swarm_of(node)
        if view is not None:
            return (view.name, *view.locate(node))
        cache, cid = self._container_of(node)
        return (cache.name, cid)

    def _refusal_text(self, node: Node) -> bytes:
        try:
            return self.refusals.text(self._refusal_key(node))
        except (pyfuse3.FUSEError, DockerProblem):
            return b""  # its object is gone: so is the file

    async def _render(self, node: Node) -> bytes:
        """One API call per open, never per read (lxcfs's model)."""
        if node.special is Special.ERR:
            return self.refusals.text(self._refusal_key(node))
        view = self._swarm_of(node)
        if view is not None:
            kind, oid = view.locate(node)
            if node.special is Special.INSPECT:
                info = await view.inspect(kind, oid)
                return (json.dumps(info, indent=4, ensure_ascii=False) + "\n").encode()
            raise _fail(errno.EIO)
        cache, cid = self._container_of(node)
        if node.special is Special.INSPECT:
            info = await cache.inspect(cid)
            return (json.dumps(info, indent=4, ensure_ascii=False) + "\n").encode()
        try:
            if node.special is Special.TOP:
                return render_top(await cache.source.top(cid))
            if node.special is Special.STATS:
                return render_stats(await cache.source.stats(cid))
        except Conflict:
            return b""  # not running: no processes, no sample
        raise _fail(errno.EIO)

    @_guard
    async def read(
        self, fh: pyfuse3.FileHandleT, off: int, size: int, inode: pyfuse3.InodeT | None = None
    ) -> bytes:
        # Every open has a handle here; `inode` comes with kernel caching (pass_inode).
        handle = self._handles.get(fh)
        if isinstance(handle, _FileHandle):
            if handle.node is not None and handle.data is not handle.node.data:
                # An open from before a change reads its own version, and the
                # kernel keeps the pages this read fills for every later open:
                # drop them again. The invalidator runs after this reply is sent.
                self._apply(Changes(changed=[handle.node.inode]))
            return handle.data[off : off + size]
        if isinstance(handle, _LogHandle):
            if not handle.follow:
                return await self._read_log(handle, off, size)
            data = await self._read_log(handle, handle.pos, size)
            handle.pos += len(data)
            return data
        if isinstance(handle, _RootFileHandle):
            return await self._read_root_file(handle, off, size)
        if isinstance(handle, _WaitHandle):
            return await self._read_wait(handle, off, size)
        raise _fail(errno.EBADF)

    async def _read_log(self, h: _LogHandle, off: int, size: int) -> bytes:
        """What the spool holds at `off`; at its end, EOF or wait for more."""
        spool = h.spool
        while True:
            if h.closed or spool.closed:
                raise _fail(errno.EBADF)
            if off < spool.size:
                return spool.read(off, size)
            if h.follow and spool.follow_error is not None:
                spool.want_more()  # following was cut short (Docker restarted, say): again
            if spool.at_eof(h.follow):
                # Reading at the end again is how `less +F` follows.
                h.eofs += 1
                if h.eofs > 1:
                    spool.want_more()
                return b""
            if h.waiting:
                raise _fail(errno.EAGAIN)  # one blocked read per open: see MAX_FOLLOWERS
            h.waiting = True
            self.waiting_reads += 1
            try:
                with trio.move_on_after(FOLLOW_POLL) as waited:
                    await spool.changed()
            finally:
                h.waiting = False
                self.waiting_reads -= 1
            # pyfuse3 cannot see the kernel's INTERRUPT, and a reader killed
            # by a signal waits until we answer: look for the signal ourselves.
            if waited.cancelled_caught and _signal_pending(h.opener_pid):
                raise _fail(errno.EINTR)

    @_guard
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self._handles.get(fh)
        if not isinstance(handle, _CtlHandle | _SwarmCtlHandle):
            raise _fail(errno.EBADF)
        try:
            if off != 0:
                # The rest of a write the kernel split, or a second write on one
                # descriptor: never a whole command, so never run.
                raise BadCommand(f"one command per open and write, at offset 0 (not {off})")
            if isinstance(handle, _SwarmCtlHandle):
                action = await handle.swarm.control(handle.kind, handle.oid, buf)
                log.info("ctl %s %s: %s", handle.kind, handle.oid[:12], action)
                return len(buf)
            command = parse_command(buf)
            log.info("ctl %s: %s %s", handle.cid[:12], command.action, command.params or "")
            await handle.cache.control(handle.cid, command)
            await self._told_kernel()  # `cat State` right after `stop` reads `exited`
            return len(buf)
        except Exception as exc:
            # The writer gets an errno; its `err` file says why.
            self.refusals.note(handle.refusal_key, buf, _refusal_reason(exc))
            raise

    @_guard
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self._handles.pop(fh, None)
        if isinstance(handle, _LogHandle):
            # A read may still wait on this handle (its reader was killed): it ends now.
            handle.closed = True
            handle.spools.release(handle.spool)
            if handle.follow:
                self.followers.give_back(handle.opener)
        elif isinstance(handle, _RootFileHandle):
            handle.reader.close()
        elif isinstance(handle, _WaitHandle):
            self._release_wait(handle)

    def _refuse_under_root(self, *inodes: int) -> None:
        """A container's files are read-only: EROFS for any change there."""
        for inode in inodes:
            if inode in self.table and _in_root(self.table.get(inode)):
                raise _fail(errno.EROFS)

    @_guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_files = len(self.table)
        s.f_namemax = NAME_MAX
        return s

    # -- everything that would change the tree ------------------------------------------

    @_guard
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if _in_root(node):
            raise _fail(errno.EROFS)
        only_truncate = fields.update_size and not (
            fields.update_mode or fields.update_uid or fields.update_gid
        )
        if node.special is Special.CTL and only_truncate and attr.st_size == 0:
            return self._attrs(node)  # `echo stop > ctl` truncates first: harmless
        raise _fail(errno.EPERM)

    @_guard
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._refuse_under_root(new_parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._refuse_under_root(parent_inode)
        raise _fail(errno.EACCES)

    @_guard
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_under_root(parent_inode_old, parent_inode_new)
        raise _fail(errno.EACCES)

    @_guard
    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._refuse_under_root(inode)
        raise _fail(errno.EACCES)

    @_guard
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._refuse_under_root(inode)
        raise _fail(errno.EACCES)

    @_guard
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        self._node(inode)
        if inode == ROOT_INODE and name == STATS_XATTR:
            return json.dumps(self.stats(), sort_keys=True).encode()
        raise _fail(pyfuse3.ENOATTR)

    @_guard
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        self._node(inode)
        return [pyfuse3.XAttrNameT(STATS_XATTR)] if inode == ROOT_INODE else []

    def stats(self) -> dict[str, Any]:
        """Counters for the benchmark and the tests: requests by kind (all
        engines' summed, and each engine's), table size."""
        engines = {cache.name: cache.stats() for cache in self.caches.values()}
        engines.update((view.name, view.stats()) for view in self.swarms.values())
        total: collections.Counter[str] = collections.Counter()
        for one in engines.values():
            total.update(one["requests"])
        return {
            "requests": dict(total),
            "engines": engines,
            "inodes": len(self.table),
            "kernel_cache": self.kernel_cache,
            "logs": {
                "spools": sum(len(cache.logs) for cache in self.caches.values()),
                "followers": self.followers.count,
                "waiting_reads": self.waiting_reads,
            },
            "exit_waits": len(self._exit_waits),
        }


# Signals whose default action does not end the process: a reader that gets
# one of these (Ctrl-Z, a window resize) keeps waiting.
_NOT_FATAL = frozenset(
    {
        signal.SIGCHLD,
        signal.SIGCONT,
        signal.SIGURG,
        signal.SIGWINCH,
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    }
)
_NOT_FATAL_MASK = sum(1 << (s - 1) for s in _NOT_FATAL)


def _refusal_reason(exc: Exception) -> str:
    """What an `err` file says of a refused write: Docker's message or ours."""
    if isinstance(exc, DockerProblem | BadCommand) and str(exc):
        return str(exc)
    if isinstance(exc, pyfuse3.FUSEError):
        return os.strerror(exc.errno)
    return f"internal error: {type(exc).__name__} (see the daemon's log)"


def _signal_pending(pid: int) -> bool:
    """Whether the opener has a signal pending that will end it.

    A blocked read that we do not answer keeps a dying process waiting
    (pyfuse3 cannot see the kernel's INTERRUPT), so look ourselves: pending,
    not blocked, not caught, not ignored, and fatal by default. A process
    that is gone (the descriptor was inherited) reads as no signal.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
        blocked = int(fields["SigBlk"], 16)
        handled = int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)
    except (OSError, KeyError, ValueError):
        return False
    kill = 1 << (signal.SIGKILL - 1)
    return bool(pending & kill or pending & ~blocked & ~handled & ~_NOT_FATAL_MASK)


def _invalidate_inodes(inodes: Sequence[int], attr_only: bool) -> None:
    """Drop what the kernel caches for these inodes (in a worker thread: it writes to /dev/fuse)."""
    for inode in inodes:
        try:
            pyfuse3.invalidate_inode(pyfuse3.InodeT(inode), attr_only)
        except OSError as exc:
            # ENOENT: the kernel already dropped the inode; nothing to do.
            if exc.errno != errno.ENOENT:
                log.debug("invalidate_inode(%d): %s", inode, exc)


def _in_root(node: Node) -> bool:
    """Whether a node is a container's root/ or under it."""
    return node.entry is not None or node.special is Special.ROOT


def _spool_errno(exc: OSError) -> int:
    """The reader's errno when the daemon cannot make a spool file: the
    daemon's own descriptor limit (EMFILE) is not the reader's, so ENFILE."""
    if exc.errno == errno.EMFILE:
        return errno.ENFILE
    return exc.errno or errno.EIO


def _process_of(pid: int) -> int:
    """The process (thread group) a request's thread belongs to."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid
