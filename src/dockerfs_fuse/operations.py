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

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from .docker_source import (
    BadRequest,
    Conflict,
    DockerProblem,
    DockerSource,
    DockerUnavailable,
    NotFound,
)
from .inodes import ROOT_INODE, Changes, InodeTable, Kind, Node
from .tree import Container

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# How long the kernel may trust what we told it. Removals and size changes
# are pushed to the kernel as invalidations, so these bound staleness only
# for changes nobody has asked us about yet.
ENTRY_TIMEOUT = 10.0
ATTR_TIMEOUT = 10.0
# readdir offsets start above 2: NFS re-exports treat 1 and 2 specially.
_OFFSET_BASE = 3


def errno_for(exc: BaseException) -> int:
    """The one place Docker's errors become errnos."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, Conflict):
        return errno.EBUSY
    if isinstance(exc, BadRequest):
        return errno.EINVAL
    if isinstance(exc, DockerUnavailable | DockerProblem):
        return errno.EIO
    return errno.EIO


def _guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only FUSEError reach pyfuse3; log everything else once."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except DockerProblem as exc:
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


class _Refresher:
    """One container-list request at a time; callers that arrive meanwhile share it."""

    def __init__(self, fetch: Callable[[], Awaitable[list[Container]]]) -> None:
        self._fetch = fetch
        self._pending: trio.Event | None = None
        self._result: list[Container] | Exception | None = None

    async def get(self) -> list[Container]:
        while True:
            if self._pending is None:
                self._pending = done = trio.Event()
                self._result = None
                try:
                    result = await self._fetch()
                except Exception as exc:
                    self._result = exc
                    raise
                else:
                    self._result = result
                    return result
                finally:
                    self._pending = None
                    done.set()
            await self._pending.wait()
            shared = self._result
            if shared is None:
                continue  # the request we waited on was cancelled: make our own
            if isinstance(shared, Exception):
                raise shared
            return shared


class DockerFS(pyfuse3.Operations):
    """The containers of one Docker engine as a read-only tree."""

    def __init__(self, source: DockerSource, *, show_all: bool = False) -> None:
        super().__init__()
        self.source = source
        self.show_all = show_all
        self.table = InodeTable(root_mtime_ns=time.time_ns())
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._handles: dict[int, _DirHandle | _FileHandle] = {}
        self._next_fh = 1
        self._refresher = _Refresher(self._fetch)
        self._inval_send, self._inval_recv = trio.open_memory_channel[Changes](1000)

    # -- the cache -------------------------------------------------------------

    async def _fetch(self) -> list[Container]:
        return await self.source.list_containers(all=self.show_all)

    async def refresh(self) -> None:
        """Fetch the container list and make the tree match it."""
        containers = await self._refresher.get()
        self._apply(self.table.set_containers(containers))

    def load(self, containers: Sequence[Container]) -> None:
        """Fill the tree before mounting (start-up's first listing)."""
        self.table.set_containers(containers)

    def _apply(self, changes: Changes) -> None:
        """Hand kernel invalidations to the background task, never blocking a request."""
        if not changes:
            return
        try:
            self._inval_send.send_nowait(changes)
        except trio.WouldBlock:
            log.warning("invalidation queue full; the kernel may show stale entries briefly")

    async def run_invalidator(self) -> None:
        """Push cache invalidations to the kernel (a task in the main nursery).

        Entry invalidation goes through pyfuse3's own notification thread
        (`invalidate_entry_async`); attribute invalidation is a quick write
        to /dev/fuse, done off the trio thread so a request is never waited on.
        """
        async for changes in self._inval_recv:
            for parent, name, inode in changes.removed:
                try:
                    pyfuse3.invalidate_entry_async(
                        parent, os.fsencode(name), deleted=inode, ignore_enoent=True
                    )
                except Exception as exc:
                    log.debug("invalidate_entry_async(%d, %s): %s", parent, name, exc)
            for inode in changes.changed:
                try:
                    await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, True)
                except OSError as exc:
                    # ENOENT: the kernel already dropped the inode; nothing to do.
                    if exc.errno != errno.ENOENT:
                        log.debug("invalidate_inode(%d): %s", inode, exc)

    # -- helpers ------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.table.get(inode)
        except KeyError:
            raise _fail(errno.ENOENT) from None

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        if node.kind is Kind.DIR:
            a.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
        elif node.kind is Kind.LINK:
            a.st_mode = pyfuse3.ModeT(stat.S_IFLNK | 0o777)
        else:
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
        a.st_nlink = node.nlink
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_size = len(node.data) if node.kind is not Kind.DIR else 0
        a.st_blksize = 4096
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    def _new_handle(self, handle: _DirHandle | _FileHandle) -> pyfuse3.FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = handle
        return pyfuse3.FileHandleT(fh)

    async def _find(self, parent: Node, name: str) -> Node | None:
        node = self.table.lookup(parent, name)
        if node is None and parent.inode == ROOT_INODE and _looks_like_full_id(name):
            # A container started since the last listing: ask Docker once.
            await self.refresh()
            node = self.table.lookup(parent, name)
        return node

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
        return self._attrs(node)

    @_guard
    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for inode, count in inode_list:
            self.table.forget(inode, count)

    @_guard
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

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
        node = self._node(inode)
        if not node.is_dir:
            raise _fail(errno.ENOTDIR)
        if inode == ROOT_INODE:
            # The contract: reading the root is what refreshes the cache.
            await self.refresh()
        entries = [(name, child.inode) for name, child in self.table.children(node).items()]
        return self._new_handle(_DirHandle(entries))

    @_guard
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
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
            if not pyfuse3.readdir_reply(
                token, os.fsencode(name), self._attrs(node), index + _OFFSET_BASE
            ):
                return
            self.table.remember(node)

    @_guard
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._handles.pop(fh, None)

    @_guard
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.is_dir:
            raise _fail(errno.EISDIR)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise _fail(errno.EACCES)
        # Direct I/O: the kernel neither caches pages nor clips reads at a
        # cached size, so `cat` gets exactly this snapshot even when the text
        # (Status, say) changed length since the kernel last saw its size.
        fh = self._new_handle(_FileHandle(node.data))
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    @_guard
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        handle = self._handles.get(fh)
        if not isinstance(handle, _FileHandle):
            raise _fail(errno.EBADF)
        return handle.data[off : off + size]

    @_guard
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self._handles.pop(fh, None)

    @_guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_files = len(self.table)
        s.f_namemax = 255
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
        self._node(inode)
        raise _fail(errno.EPERM)

    @_guard
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        raise _fail(errno.EBADF)

    @_guard
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
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
        raise _fail(errno.EACCES)

    @_guard
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EACCES)

    @_guard
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EACCES)

    @_guard
    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise _fail(errno.EACCES)

    @_guard
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _fail(errno.EACCES)

    @_guard
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
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
        raise _fail(errno.EACCES)

    @_guard
    async def setxattr(
        self,
        inode: pyfuse3.InodeT,
        name: pyfuse3.XAttrNameT,
        value: bytes,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        raise _fail(errno.EACCES)

    @_guard
    async def removexattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        raise _fail(errno.EACCES)

    @_guard
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        self._node(inode)
        raise _fail(pyfuse3.ENOATTR)

    @_guard
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        self._node(inode)
        return []


def _looks_like_full_id(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)
