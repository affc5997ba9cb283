"""A container's `exec/` (behind `.live/`): `clone` and the files of its live sessions.

Opening `clone` reserves a session (engine/exec.py) and that descriptor is
the session's ctl; `N/` appears in `exec/` for as long as one of the
session's files is open. Every file is the mounting user's alone (0600,
0400, directories 0700; the mount has default_permissions), and reads that
block answer EINTR to a reader that gets a signal, as `logs.follow` does.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from dockerfs_fuse.docker.errors import DockerProblem
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.exec import ExecSessions, Session, SessionError
from dockerfs_fuse.fuse.errors import errno_for, fail, refusal_reason
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import interruptible, interruptible_restartable
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.exec import CLONE, ExecFile, parse_line
from dockerfs_fuse.model.inodes import Changes, Node

log = logging.getLogger(__name__)
R = TypeVar("R")

# Reads blocked in sessions' data, stderr and wait at once, of the mount's
# MAX_WORKERS (operations.py): logs.follow and wait may hold their share too.
MAX_BLOCKED = 192
# The preferred I/O size (st_blksize) of the files a command's output is read
# from: `cat` and others read that much at a time, so a fast command's output
# crosses in fewer, larger requests (each costs a round trip through FUSE).
STREAM_BLOCK = 1 << 20
_STREAMS = (ExecFile.CTL, ExecFile.DATA, ExecFile.STDERR)
_DIR_MODE = stat.S_IFDIR | 0o700
_MODES = {
    None: stat.S_IFREG | 0o600,  # clone
    ExecFile.CTL: stat.S_IFREG | 0o600,
    ExecFile.DATA: stat.S_IFREG | 0o600,
    ExecFile.STDERR: stat.S_IFREG | 0o400,
    ExecFile.STATUS: stat.S_IFREG | 0o400,
    ExecFile.WAIT: stat.S_IFREG | 0o400,
}


class _Blocked:
    """Reads blocked in exec files now, bounded by MAX_BLOCKED."""

    def __init__(self) -> None:
        self.count = 0

    async def run(
        self, pid: int, restartable: bool, fn: Callable[..., Awaitable[R]], *args: Any
    ) -> R:
        if self.count >= MAX_BLOCKED:
            raise fail(errno.EAGAIN)
        self.count += 1
        try:
            if restartable:
                return await interruptible_restartable(pid, fn, *args)
            return await interruptible(pid, fn, *args)
        finally:
            self.count -= 1


class SessionHandle(Handle):
    """An open file of a session; holds the session while open."""

    def __init__(self, view: ExecView, session: Session, file: ExecFile, pid: int) -> None:
        self.view = view
        self.session = session
        self.file = file
        self.pid = pid
        self.busy = False
        view.sessions.hold(session, file is ExecFile.CTL)

    def release(self) -> None:
        self.view.sessions.let_go(self.session, self.file is ExecFile.CTL)

    async def _once(
        self, fn: Callable[..., Awaitable[R]], *args: Any, restartable: bool = False
    ) -> R:
        """One blocking call per open at a time (EAGAIN for another), interruptible.
        `restartable`: fn may be cancelled and called again losing nothing."""
        if self.busy:
            raise fail(errno.EAGAIN)
        self.busy = True
        try:
            return await self.view.blocked.run(self.pid, restartable, fn, *args)
        finally:
            self.busy = False

    async def _call(
        self, fn: Callable[..., Awaitable[R]], *args: Any, restartable: bool = False
    ) -> R:
        """_once, its failures as errnos."""
        try:
            return await self._once(fn, *args, restartable=restartable)
        except (SessionError, DockerProblem, trio.TooSlowError) as exc:
            raise fail(_errno(exc)) from None


class CtlHandle(SessionHandle):
    """`clone` or `N/ctl`: reads "N" (or why the last line was refused, or,
    after `run`, the command's output); each write is one line."""

    def __init__(self, view: ExecView, session: Session, pid: int) -> None:
        super().__init__(view, session, ExecFile.CTL, pid)
        self.reply = f"{session.number}\n".encode()
        self.pos = 0
        self.output = False

    async def read(self, off: int, size: int) -> bytes:
        if self.output:
            data = None if self.busy else self.session.read_now(1, size)
            if data is None:
                data = await self._call(self.session.read, 1, size, restartable=True)
            return data
        data = self.reply[self.pos : self.pos + size]
        self.pos += len(data)
        return data

    async def write(self, off: int, buf: bytes) -> int:
        try:
            line = parse_line(buf)
            session = self.session
            if line.spec is not None:
                log.info("exec %s/%d: %s", session.cid[:12], session.number, line.spec.argv[:4])
                await self._once(session.start, line.spec)
                self.output = line.spec.merged
            elif line.verb == "kill":
                await self._once(session.kill, line.signal)
            elif line.verb == "eof":
                await self._once(session.close_stdin)
            else:
                session.killonclose = True
        except Exception as exc:
            # The writer gets an errno; a read of this descriptor says why.
            why = str(exc) if isinstance(exc, SessionError) else refusal_reason(exc)
            self.reply = f"error: {why}\n".encode("utf-8", "replace")
            self.pos = 0
            if isinstance(exc, pyfuse3.FUSEError):
                raise
            raise fail(_errno(exc)) from None
        return len(buf)


class DataHandle(SessionHandle):
    """`data` (stdout; writes go to stdin) or `stderr`, read as a pipe."""

    async def read(self, off: int, size: int) -> bytes:
        which = 2 if self.file is ExecFile.STDERR else 1
        if not self.busy:
            # What is there already needs no watch for signals (most reads of a fast command).
            data = self.session.read_now(which, size)
            if data is not None:
                return data
        return await self._call(self.session.read, which, size, restartable=True)

    async def write(self, off: int, buf: bytes) -> int:
        if self.file is not ExecFile.DATA:
            raise fail(errno.EBADF)
        return await self._call(self.session.write, buf)


class StatusHandle(SessionHandle):
    def __init__(self, view: ExecView, session: Session, pid: int) -> None:
        super().__init__(view, session, ExecFile.STATUS, pid)
        self.text = session.status()

    async def read(self, off: int, size: int) -> bytes:
        return self.text[off : off + size]


class WaitHandle(SessionHandle):
    """`wait`: the first read blocks until the command has ended, then its exit code."""

    def __init__(self, view: ExecView, session: Session, pid: int) -> None:
        super().__init__(view, session, ExecFile.WAIT, pid)
        self.text: bytes | None = None

    async def read(self, off: int, size: int) -> bytes:
        if self.text is None:
            self.text = f"{await self._call(self.session.wait, restartable=True)}\n".encode()
        return self.text[off : off + size]


_HANDLES: dict[ExecFile, type[SessionHandle]] = {
    ExecFile.DATA: DataHandle,
    ExecFile.STDERR: DataHandle,
}


class ExecView:
    """Every container's exec/ directory and its sessions' files."""

    def __init__(
        self,
        engines: Engines,
        handles: HandleTable,
        invalidator: Invalidator,
        modes: dict[int, int],
        block_sizes: dict[int, int],
    ) -> None:
        self.engines = engines
        self.table = engines.table
        self.handles = handles
        self.invalidator = invalidator
        self.modes = modes  # what stat shows of our nodes (Attributes reads it)
        self.block_sizes = block_sizes  # the same, for st_blksize
        self.sessions = ExecSessions(self._ended)
        self.blocked = _Blocked()
        # Our files by inode: clone (None, None); a session's (session, file).
        self.files: dict[int, tuple[Session | None, ExecFile | None]] = {}
        self._nodes: dict[int, tuple[Node, Node]] = {}  # id(session): (exec/, N/)
        self.table.fold_listeners.append(self._let_go)
        self.table.gone_listeners.append(self._gone)

    def owns(self, node: Node) -> bool:
        return node.inode in self.files

    def prepare(self, node: Node) -> None:
        """A container's exec/ was looked up: give it its mode and its clone."""
        if node.special is not Special.EXEC or node.inode in self.modes:
            return
        self.modes[node.inode] = _DIR_MODE
        clone = self.table.add_file(CLONE, node)
        self.files[clone.inode] = (None, None)
        self.modes[clone.inode] = _MODES[None]
        self.block_sizes[clone.inode] = STREAM_BLOCK

    def _let_go(self, node: Node) -> None:
        """The table lets go of a container the kernel forgot (model/inodes.py),
        its exec/ and clone with it: so do we, until exec/ is looked up again.
        Kept, their numbers would keep the memory of the whole walk in use."""
        if node.special is not Special.EXEC:
            return
        for gone in (node, *(node.children or {}).values()):
            self.files.pop(gone.inode, None)
            self.modes.pop(gone.inode, None)
            self.block_sizes.pop(gone.inode, None)

    def _gone(self, inode: int) -> None:
        """A removed container's exec/ or clone, let go by the table once the
        kernel forgot it: kept, a host that makes and removes containers all
        day would keep three numbers for each it ever walked into."""
        self.files.pop(inode, None)
        self.modes.pop(inode, None)
        self.block_sizes.pop(inode, None)

    def writable(self, node: Node) -> bool:
        """Whether `echo x > FILE` may truncate it first: the files that take writes."""
        return self.files.get(node.inode, (None, ExecFile.STATUS))[1] in (
            None,
            ExecFile.CTL,
            ExecFile.DATA,
        )

    def open(self, node: Node, flags: int, pid: int) -> pyfuse3.FileInfo:
        session, file = self.files[node.inode]
        access = flags & os.O_ACCMODE
        if session is None:
            if access == os.O_RDONLY:
                raise fail(errno.EACCES)  # a session is reserved to be run
            session = self._reserve(node)
            file = ExecFile.CTL
        elif self.sessions.get(session.key, session.number) is not session:
            raise fail(errno.ENOENT)
        elif access != os.O_RDONLY and file not in (ExecFile.CTL, ExecFile.DATA):
            raise fail(errno.EACCES)
        assert file is not None
        handle: SessionHandle
        if file is ExecFile.CTL:
            handle = CtlHandle(self, session, pid)
        elif file is ExecFile.STATUS:
            handle = StatusHandle(self, session, pid)
        elif file is ExecFile.WAIT:
            handle = WaitHandle(self, session, pid)
        else:
            handle = _HANDLES[file](self, session, file, pid)
        fh = self.handles.add(handle)
        return file_info(fh, direct_io=True, keep_cache=False, nonseekable=True)

    def _reserve(self, clone: Node) -> Session:
        exec_dir = clone.parent
        owner = self.engines.container_of(clone)
        if exec_dir is None or owner is None:
            raise fail(errno.ENOENT)
        cache, cid = owner
        backend = self.sessions.backend(cache.name, cache.source)
        if backend is None:
            raise fail(errno.EOPNOTSUPP)
        try:
            session = self.sessions.reserve((cache.name, cid), backend)
        except SessionError as exc:
            log.warning("exec %s: %s", cid[:12], exc)
            raise fail(exc.errno) from None
        folder = self.table.add_dir(str(session.number), parent=exec_dir)
        self.modes[folder.inode] = _DIR_MODE
        for file in ExecFile:
            node = self.table.add_file(file.value, folder)
            self.files[node.inode] = (session, file)
            self.modes[node.inode] = _MODES[file]
            if file in _STREAMS:
                self.block_sizes[node.inode] = STREAM_BLOCK
        self._nodes[id(session)] = (exec_dir, folder)
        self.invalidator.apply(Changes(changed=[exec_dir.inode]))
        return session

    def _ended(self, session: Session) -> None:
        """A session's last file was closed: its directory goes."""
        exec_dir, folder = self._nodes.pop(id(session))
        for node in (folder, *(folder.children or {}).values()):
            self.files.pop(node.inode, None)
            self.modes.pop(node.inode, None)
            self.block_sizes.pop(node.inode, None)
        changes = self.table.remove_entry(exec_dir, folder.name)
        exec_dir.subdirs = sum(1 for c in (exec_dir.children or {}).values() if c.is_dir)
        changes.changed.append(exec_dir.inode)
        self.invalidator.apply(changes)


def _errno(exc: BaseException) -> int:
    if isinstance(exc, SessionError):
        return exc.errno
    if isinstance(exc, trio.TooSlowError):
        return errno.ETIMEDOUT
    return errno_for(exc)
