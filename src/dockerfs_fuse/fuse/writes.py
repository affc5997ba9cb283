"""Writes under a container's root/ and a volume's data/ (engine/writes.py says
how they reach it).

Only the mounting user (or root) changes anything there: anyone else is
refused EACCES before the container's own modes are asked (the kernel checks
those: default_permissions), even with allow_other. `-o ro` never gets here:
the kernel refuses first (EROFS). A file open for writing is served with
direct I/O, and every close and fsync that follows a change returns once
the engine has the file; the kernel is then told to drop what it held of it.
"""

from __future__ import annotations

import errno
import os
import time

import pyfuse3

from dockerfs_fuse.engine.writes import CannotChange, ContainerWrites, Draft
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.model.containers import NAME_MAX
from dockerfs_fuse.model.inodes import Node
from dockerfs_fuse.model.tarwrite import Meta


class DraftHandle(Handle):
    """An open of a file that is being written: its draft's content."""

    def __init__(self, view: WriteView, draft: Draft, append: bool, writer: bool) -> None:
        self.view = view
        self.draft = draft
        self.append = append
        self.writer = writer
        self.done = False

    async def read(self, off: int, size: int) -> bytes:
        return await self.view.writes.read(self.draft, off, size)

    async def write(self, off: int, buf: bytes) -> int:
        return await self.view.writes.write(self.draft, off, buf, self.append)

    async def flush(self) -> None:
        # A reader's close never uploads what a writer has half written.
        if self.writer:
            await self.fsync()

    async def fsync(self) -> None:
        await self.view.writes.flush(self.draft)
        await self.view.invalidator.told_kernel()

    async def released(self) -> None:
        if not self.done:
            self.done = True
            await self.view.writes.release(self.draft)


class WriteView:
    def __init__(
        self, writes: ContainerWrites, handles: HandleTable, invalidator: Invalidator
    ) -> None:
        self.writes = writes
        self.handles = handles
        self.invalidator = invalidator
        self.owner = os.getuid()

    def check(self, ctx: pyfuse3.RequestContext) -> None:
        """Only the mounting user or root changes a container's files."""
        if ctx.uid not in (self.owner, 0):
            raise fail(errno.EACCES)

    @staticmethod
    def _name(name: bytes) -> str:
        if len(name) > NAME_MAX:
            raise fail(errno.ENAMETOOLONG)
        return os.fsdecode(name)

    @classmethod
    def _new_name(cls, name: bytes) -> str:
        """A name to make: EINVAL unless UTF-8. The engine's archives name
        paths in UTF-8 (Go's tar writes U+FFFD for any other byte), so a
        path made with another name could never be read back or listed as
        itself; nothing is made."""
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(errno.EINVAL) from None
        return cls._name(name)

    @staticmethod
    def _meta(mode: int, ctx: pyfuse3.RequestContext) -> Meta:
        return Meta(mode & ~ctx.umask & 0o7777, ctx.uid, ctx.gid, int(time.time()))

    async def create(
        self, parent: Node, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, Node]:
        self.check(ctx)
        draft = await self.writes.create(parent, self._new_name(name), self._meta(mode, ctx))
        return self._info(draft, flags, True), draft.node

    async def open(self, node: Node, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        """An open for writing, or any open of a file that is being written.
        O_TRUNC comes here (libfuse asks the kernel for atomic_o_trunc)."""
        writing = flags & os.O_ACCMODE != os.O_RDONLY or flags & (os.O_TRUNC | os.O_APPEND)
        if writing:
            self.check(ctx)
        draft = await self.writes.open(node)
        if flags & os.O_TRUNC:
            try:
                await self.writes.truncate(draft, 0)
            except BaseException:
                await self.writes.release(draft)
                raise
        return self._info(draft, flags, bool(writing))

    def _info(self, draft: Draft, flags: int, writer: bool) -> pyfuse3.FileInfo:
        fh = self.handles.add(DraftHandle(self, draft, bool(flags & os.O_APPEND), writer))
        # Direct I/O: every write reaches the draft; no page outlives this open.
        # A writer's close uploads (DraftHandle.flush): the kernel must send FLUSH.
        return file_info(fh, direct_io=True, keep_cache=False, flush=writer)

    async def setattr(
        self,
        node: Node,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.check(ctx)
        writes = self.writes
        draft = writes.draft_of(node)
        if fields.update_size:
            if node.entry is None or not node.entry.is_regular:
                raise fail(errno.EISDIR if node.is_dir else errno.EINVAL)
            if draft is not None:
                await writes.truncate(draft, attr.st_size)
            else:
                await writes.truncate_path(node, attr.st_size)
                await self.invalidator.told_kernel()
        mode = attr.st_mode if fields.update_mode else None
        uid = attr.st_uid if fields.update_uid else None
        gid = attr.st_gid if fields.update_gid else None
        mtime = attr.st_mtime_ns // 1_000_000_000 if fields.update_mtime else None
        if mode is None and uid is None and gid is None and mtime is None:
            return
        draft = writes.draft_of(node)
        if draft is not None and draft.in_container and not draft.dirty:
            # Content unchanged (`touch` opens to set times): a tool's run,
            # not an upload of the whole file, where one can run.
            try:
                await writes.change_meta(node, mode, uid, gid, mtime)
                await self.invalidator.told_kernel()
                return
            except CannotChange:
                pass
        if draft is not None:
            m = draft.meta
            meta = Meta(
                m.mode if mode is None else mode & 0o7777,
                m.uid if uid is None else uid,
                m.gid if gid is None else gid,
                m.mtime if mtime is None else mtime,
            )
            writes.set_meta(draft, meta, mtime is not None)
            return
        await writes.change_meta(node, mode, uid, gid, mtime)
        await self.invalidator.told_kernel()

    async def mkdir(
        self, parent: Node, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> Node:
        self.check(ctx)
        node = await self.writes.mkdir(parent, self._new_name(name), self._meta(mode, ctx))
        await self.invalidator.told_kernel()
        return node

    async def symlink(
        self, parent: Node, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> Node:
        self.check(ctx)
        meta = self._meta(0o777, ctx)
        node = await self.writes.symlink(parent, self._new_name(name), target, meta)
        await self.invalidator.told_kernel()
        return node

    async def unlink(self, parent: Node, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.check(ctx)
        await self.writes.unlink(parent, self._name(name))
        await self.invalidator.told_kernel()

    async def rmdir(self, parent: Node, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.check(ctx)
        await self.writes.rmdir(parent, self._name(name))
        await self.invalidator.told_kernel()

    async def rename(
        self,
        parent: Node,
        name: bytes,
        new_parent: Node,
        new_name: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.check(ctx)
        if flags:
            raise fail(errno.EINVAL)  # RENAME_NOREPLACE, RENAME_EXCHANGE: mv has neither
        await self.writes.rename(parent, self._name(name), new_parent, self._new_name(new_name))
        await self.invalidator.told_kernel()
