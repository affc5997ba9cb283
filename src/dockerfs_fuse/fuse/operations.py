"""The pyfuse3 adapter: kernel requests in, inode-table answers out.

A dispatcher: each request finds its node in the table (model/inodes.py) and
hands it to the view that owns it: containers.py (a container's ctl, inspect,
top, stats, wait), exec.py (its exec sessions), swarm.py (--swarm), logs.py,
files.py (a container's root/), objects.py (--view=engine's images, volumes,
networks, projects), clone.py and events.py (its clone files and events);
plain files are snapshots of the table. The engines (engine/) keep
the table fresh; invalidate.py tells the kernel what changed; attrs.py says
what stat sees; listings.py serves readdir; readonly.py refuses changes.
Every handler goes through `guard` (errors.py), so no exception ever
escapes into pyfuse3.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import pyfuse3

from dockerfs_fuse.docker.errors import DockerProblem
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.docker.writes import DockerWrites
from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.roots import ContainerRoots, in_root
from dockerfs_fuse.engine.writes import ContainerWrites, WriteBackend
from dockerfs_fuse.fuse.attrs import BLOCK_SIZE, Attributes
from dockerfs_fuse.fuse.clone import open_clone
from dockerfs_fuse.fuse.containers import ContainerView
from dockerfs_fuse.fuse.errors import fail, guard
from dockerfs_fuse.fuse.events import open_events
from dockerfs_fuse.fuse.exec import ExecView
from dockerfs_fuse.fuse.files import RootView
from dockerfs_fuse.fuse.handles import NOFLUSH, HandleTable, SnapshotHandle, file_info
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.listings import DirHandle, Listings
from dockerfs_fuse.fuse.logs import Followers, open_log
from dockerfs_fuse.fuse.memory import give_back
from dockerfs_fuse.fuse.objects import ObjectsView
from dockerfs_fuse.fuse.readonly import ReadOnly
from dockerfs_fuse.fuse.swarm import SwarmView
from dockerfs_fuse.fuse.writes import WriteView
from dockerfs_fuse.model.containers import NAME_MAX, Special
from dockerfs_fuse.model.ctl import Refusals
from dockerfs_fuse.model.inodes import ROOT_INODE, Kind, Node

log = logging.getLogger(__name__)

# pyfuse3 serves at most this many requests at once; logs.py keeps reads that
# block to a share of them.
MAX_WORKERS = 512
# `getfattr -n user.dockerfs.stats MOUNT`: Docker request counts, for make bench.
STATS_XATTR = b"user.dockerfs.stats"
# Container directories the kernel forgot (and the table folded) between two
# returns of freed memory to the system: ~1,000 containers' nodes are ~10 MB.
FOLDS_PER_GIVE_BACK = 1000


class DockerFS(ReadOnly):
    """The containers of one or more engines (`engines`) as a read-only tree.

    Each engine's cache keeps its subtree fresh and tells `invalidator`
    what changed; this class only answers the kernel from the table.
    """

    def __init__(self, engines: Engines, invalidator: Invalidator) -> None:
        super().__init__()
        self.engines = engines
        self.table = engines.table
        self.invalidator = invalidator
        invalidator.is_dir = self._is_dir
        # The pyfuse3 patch (kernel_cache.py): the kernel opens directories
        # itself and caches listings and core files' pages; readdir gets the inode.
        self.kernel_cache = self.pass_inode = engines.kernel_cache
        self.handles = HandleTable()
        self.flushes = 0  # FLUSH requests: none for an open with noflush (handles.py)
        self.followers = Followers()
        self.refusals = Refusals()  # what each `err` file says
        self.attrs = Attributes(engines, lambda node: len(self._err_text(node)))
        self.containers = ContainerView(
            engines, self.handles, self.refusals, invalidator, self.followers
        )
        self.swarm = SwarmView(engines, self.handles, self.refusals)
        self.objects = ObjectsView(engines, self.handles, self.refusals, invalidator)
        self.exec = ExecView(
            engines, self.handles, invalidator, self.attrs.modes, self.attrs.block_sizes
        )
        roots = ContainerRoots(engines, invalidator.apply)
        self.roots = RootView(roots, self.handles, self.kernel_cache)
        self._write_backends: dict[str, WriteBackend] = {}
        writes = ContainerWrites(roots, self._write_backend, invalidator.apply)
        self.writes = WriteView(writes, self.handles, invalidator)
        self.listings = Listings(engines, self.attrs, self.roots, invalidator)
        self._given_back_at = 0  # table.folds then

    def _write_backend(self, cache: EngineCache) -> WriteBackend | None:
        """The writing calls of an engine whose source is a DockerSource."""
        backend = self._write_backends.get(cache.name)
        if backend is None and isinstance(cache.source, DockerSource):
            backend = self._write_backends[cache.name] = DockerWrites(cache.source)
        return backend

    def close(self) -> None:
        """At unmount: drafts still open are kept on disk (and logged)."""
        self.writes.writes.close()

    async def run_invalidator(self) -> None:
        """Push the table's changes to the kernel (a task in the main nursery)."""
        await self.invalidator.run()

    async def run_events(self) -> None:
        """Every engine's event stream (a task in the main nursery)."""
        await self.engines.run_events()

    # -- who answers for a node ------------------------------------------------------

    def _node(self, inode: int) -> Node:
        try:
            return self.table.get(inode)
        except KeyError:
            raise fail(errno.ENOENT) from None

    def _is_dir(self, inode: int) -> bool:
        node = self.table.get(inode) if inode in self.table else None
        return node is not None and node.is_dir

    def _objects_of(self, node: Node) -> ContainerView | SwarmView | ObjectsView:
        """The view of the object (container, service, node, task, image, volume,
        network) a node is in."""
        if self.engines.swarm_of(node) is not None:
            return self.swarm
        if self.engines.objects_of(node) is not None:
            return self.objects
        return self.containers

    def _err_text(self, node: Node) -> bytes:
        """What a node's `err` says now; nothing once its object is gone."""
        try:
            return self.refusals.text(self._objects_of(node).refusal_key(node))
        except (pyfuse3.FUSEError, DockerProblem):
            return b""

    async def _find(self, parent: Node, name: str) -> Node | None:
        view = self.engines.swarm_lists.get(parent.inode) or self.engines.object_lists.get(
            parent.inode
        )
        if view is not None:
            return await view.find(parent, name)
        if in_root(parent) and name not in (".", ".."):
            pending = self.writes.writes.pending(parent, name)
            return pending or await self.roots.lookup(parent, name)
        cache = self.engines.caches.get(parent.inode)
        if cache is None:  # inside a container, or the root of several engines
            return self.table.lookup(parent, name)
        return await cache.find(name)

    def refusal(self, *inodes: int, xattr: bool = False) -> int:
        """What root/ cannot make (hard links, nodes) is EROFS, and its files
        have no extended attributes to set (ENOTSUP, which `cp -a` and
        `rsync -X` pass over); nothing else can be made (EACCES)."""
        for inode in inodes:
            if inode in self.table and in_root(self.table.get(inode)):
                return errno.ENOTSUP if xattr else errno.EROFS
        return errno.EACCES

    # -- requests ---------------------------------------------------------------------

    @guard
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if not parent.is_dir:
            raise fail(errno.ENOTDIR)
        node = await self._find(parent, os.fsdecode(name))
        if node is None or node.gone:
            raise fail(errno.ENOENT)
        self.table.remember(node)
        self.roots.note_asker(node, ctx.pid)
        self.exec.prepare(node)
        return self._attrs(node)

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = self.attrs.of(node)
        size = self.writes.writes.shown_size(node)
        if size is not None:  # being written: its draft's size
            attrs.st_size = size
            attrs.st_blocks = (size + 511) // 512
        return attrs

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        # Not guard: pyfuse3 lets nothing at all escape forget, not even FUSEError.
        try:
            for inode, count in inode_list:
                self.table.forget(inode, count)
            folded = self.table.folds - self._given_back_at
            # Every FOLDS_PER_GIVE_BACK, and once the kernel holds nothing
            # below any container (the end of a forgotten walk).
            if folded >= FOLDS_PER_GIVE_BACK or (folded and not self.table.holding()):
                self._given_back_at = self.table.folds
                give_back()
        except Exception:
            log.exception("forget")

    @guard
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        self.roots.note_asker(node, ctx.pid)
        return self._attrs(node)

    @guard
    async def readlink(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileNameT:
        node = self._node(inode)
        if node.kind is not Kind.LINK:
            raise fail(errno.EINVAL)
        return pyfuse3.FileNameT(node.data)

    @guard
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        if self.kernel_cache:
            # The kernel then stops sending OPENDIR and RELEASEDIR and caches
            # every listing; readdir gets the inode (see Listings.list_for_kernel).
            raise fail(errno.ENOSYS)
        node = self._node(inode)
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        return self.handles.add(await self.listings.open(node, ctx.pid))

    @guard
    async def readdir(
        self,
        fh: pyfuse3.FileHandleT,
        start_id: int,
        token: pyfuse3.ReaddirToken,
        inode: pyfuse3.InodeT | None = None,
    ) -> None:
        if inode is not None:
            node = self._node(inode)
            if not node.is_dir:
                raise fail(errno.ENOTDIR)
            return await self.listings.list_for_kernel(node, start_id, token)
        handle = self.handles.get(fh)
        if not isinstance(handle, DirHandle):
            raise fail(errno.EBADF)
        self.listings.reply(handle, start_id, token)

    @guard
    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self.handles.pop(fh)

    @guard
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.gone:
            raise fail(errno.ENOENT)  # the kernel has yet to drop its entry
        if node.is_dir:
            raise fail(errno.EISDIR)
        clone = self.engines.clones.of(node.inode)
        if clone is not None:
            return open_clone(self.handles, *clone, ctx.pid, self.invalidator)
        if self.exec.owns(node):
            return self.exec.open(node, flags, ctx.pid)
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND)
        if node.entry is not None:
            if writing or self.writes.writes.draft_of(node) is not None:
                return await self.writes.open(node, flags, ctx)
            return await self.roots.open(node, ctx.pid)
        if node.special is Special.CTL:
            if flags & os.O_ACCMODE != os.O_WRONLY:
                raise fail(errno.EACCES)
            return self._objects_of(node).open_ctl(node)
        if writing:
            raise fail(errno.EACCES)
        if node.special is None:
            data = node.data
            if self.kernel_cache:
                # Pages stay cached between opens; every change of the content
                # invalidates them (run_invalidator), so they are never stale.
                fh = self.handles.add(SnapshotHandle(data, node, self.invalidator.apply))
                owner = self.engines.cache_of(node)
                keep = owner is not None and owner.keep_pages
                return file_info(fh, keep_cache=keep)
        elif node.special in (Special.LOGS, Special.FOLLOW):
            spools, key = self._objects_of(node).log_source(node)
            follow = node.special is Special.FOLLOW
            return open_log(self.handles, self.followers, spools, key, node.name, follow, ctx.pid)
        elif node.special is Special.WAIT:
            return self._objects_of(node).open_wait(node, ctx.pid)
        elif node.special is Special.EVENTS:
            streams = self.engines.events_of(node)
            if streams is None:
                raise fail(errno.ENOENT)
            return await open_events(self.handles, self.followers, streams, ctx.pid)
        elif node.special is Special.ERR:
            data = self.refusals.text(self._objects_of(node).refusal_key(node))
        else:
            data = await self._objects_of(node).render(node)
        # Direct I/O: the kernel neither caches pages nor clips reads at a
        # cached size, so `cat` gets exactly this snapshot even when the text
        # (Status, say) changed length since the kernel last saw its size.
        fh = self.handles.add(SnapshotHandle(data))
        return file_info(fh, direct_io=True, keep_cache=False)

    @guard
    async def read(
        self, fh: pyfuse3.FileHandleT, off: int, size: int, inode: pyfuse3.InodeT | None = None
    ) -> bytes:
        # Every open has a handle here; `inode` comes with kernel caching (pass_inode).
        handle = self.handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return await handle.read(off, size)

    @guard
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        handle = self.handles.get(fh)
        if handle is None:
            raise fail(errno.EBADF)
        return await handle.write(off, buf)

    @guard
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        self.flushes += 1
        handle = self.handles.get(fh)
        if handle is not None:
            await handle.flush()

    @guard
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        handle = self.handles.get(fh)
        if handle is not None:
            await handle.fsync()

    @guard
    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        handle = self.handles.pop(fh)
        if handle is not None:
            handle.release()
            await handle.released()

    # -- changes under a container's root/ (writes.py) ---------------------------

    def _root_dir(self, inode: int) -> Node | None:
        """The directory under root/ a change is asked in, or None elsewhere."""
        node = self._node(inode)
        if not in_root(node):
            return None
        if not node.is_dir:
            raise fail(errno.ENOTDIR)
        return node

    def _changed_dir(self, inode: int) -> Node:
        """The directory under root/ a change is asked in; elsewhere, the refusal."""
        node = self._root_dir(inode)
        if node is None:
            raise fail(self.refusal(inode))
        return node

    @guard
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._changed_dir(parent_inode)
        info, node = await self.writes.create(parent, name, mode, flags, ctx)
        self.table.remember(node)
        return info, self._attrs(node)

    @guard
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        parent = self._changed_dir(parent_inode)
        node = await self.writes.mkdir(parent, name, mode, ctx)
        self.table.remember(node)
        return self._attrs(node)

    @guard
    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        parent = self._changed_dir(parent_inode)
        node = await self.writes.symlink(parent, name, target, ctx)
        self.table.remember(node)
        return self._attrs(node)

    @guard
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        parent = self._changed_dir(parent_inode)
        await self.writes.unlink(parent, name, ctx)

    @guard
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        parent = self._changed_dir(parent_inode)
        await self.writes.rmdir(parent, name, ctx)

    @guard
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self._root_dir(parent_inode_old)
        new = self._root_dir(parent_inode_new)
        if old is None or new is None:
            raise fail(self.refusal(parent_inode_old, parent_inode_new))
        await self.writes.rename(old, name_old, new, name_new, flags, ctx)

    @guard
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK_SIZE
        s.f_files = len(self.table)
        s.f_namemax = NAME_MAX
        return s

    @guard
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if node.entry is not None:
            await self.writes.setattr(node, attr, fields, ctx)
            return self._attrs(node)
        if in_root(node):
            raise fail(errno.EROFS)  # root/ itself
        only_truncate = fields.update_size and not (
            fields.update_mode or fields.update_uid or fields.update_gid
        )
        writable = (
            node.special is Special.CTL
            or self.engines.clones.of(inode) is not None
            or self.exec.writable(node)
        )
        if writable and only_truncate and attr.st_size == 0:
            return self.attrs.of(node)  # `echo stop > ctl` truncates first: harmless
        raise fail(errno.EPERM)

    @guard
    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        self._node(inode)
        if inode == ROOT_INODE and name == STATS_XATTR:
            return json.dumps(self.stats(), sort_keys=True).encode()
        raise fail(pyfuse3.ENOATTR)

    @guard
    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        self._node(inode)
        return [pyfuse3.XAttrNameT(STATS_XATTR)] if inode == ROOT_INODE else []

    def stats(self) -> dict[str, Any]:
        """Counters for the benchmark and the tests: requests by kind (all
        engines' summed, and each engine's), table size."""
        engines = self.engines.stats()
        total: collections.Counter[str] = collections.Counter()
        for one in engines.values():
            total.update(one["requests"])
        return {
            "requests": dict(total),
            "engines": engines,
            "inodes": len(self.table),
            "kernel_cache": self.kernel_cache,
            "flush": {"noflush": NOFLUSH, "requests": self.flushes},
            "logs": {
                "spools": self.engines.log_spool_count(),
                "followers": self.followers.count,
                "waiting_reads": self.followers.waiting_reads,
            },
            "exit_waits": len(self.engines.exit_waits),
            "exec": {"sessions": self.exec.sessions.count, "blocked": self.exec.blocked.count},
        }
