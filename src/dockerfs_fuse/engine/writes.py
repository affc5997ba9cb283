"""Writing a container's files through root/: staged on disk, uploaded whole.

The engine's only call that writes is `PUT /containers/{id}/archive`: a tar
extracted into a directory of the container, which adds or replaces whole
files. So a file opened for writing is a *draft*: its content staged in a
file of the daemon's private staging directory (never in memory), loaded
from the container only when a read, a write or a truncation to a length
other than 0 needs the old bytes, and uploaded whole at each close (flush)
and fsync that follows a change; they return once the engine has it.

A reader in a running container sees the old file or the new one, never a
mix: the draft of a file the container has is uploaded under a temporary
name in the same directory and renamed into place by a short exec of `mv`
(Docker's extraction itself removes the old file and writes the new one in
place). A stopped (or paused) container, or one without `mv`, gets the
upload under the file's own name: nothing in it reads meanwhile (a paused
one's processes may, after). So does a new file, which has no old content
to keep (as `docker cp` writes it: one request per file for `tar -x`).

In a running container, a rename, a removal, a change of mode, owner or
time, and the upload of a file of at most SMALL_UPLOAD bytes go first
through the container's long-lived shell (engine/channel.py): one line
written, one acknowledgement read, a few ms where an exec or a PUT costs
~50. A small file is written there under a temporary name, given its mode
and owner, and renamed into place (a new file too). Where there is no
channel (no `sh`, a stopped container), what follows applies.

What the archive API cannot do (remove, rename, change a mode, an owner or
a time) is a short exec of `rm`, `rmdir`, `mv`, `chmod`, `chown` or `touch`
in a running container that has them. Elsewhere (a stopped container, a
volume's data/) removing and renaming are refused (EPERM), and a change of
mode, owner or time is an upload of the path's entry again: a directory's
member (the engine's extraction sets an existing directory's), or a file's
whole content; a symlink's, EPERM. `mkdir` and `symlink` are uploads, so
they work on a stopped container too.

A refused upload leaves the draft dirty: the close or fsync fails with an
errno, and at the last close the staged file is kept where it is, its
location logged, until someone removes it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import secrets
import stat
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import trio

from dockerfs_fuse.docker.errors import Conflict
from dockerfs_fuse.docker.writes import Ran, TarBody
from dockerfs_fuse.engine.channel import LostAck, NoChannel, ShellStream, Unsettled
from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.roots import ContainerRoots
from dockerfs_fuse.model.files import Entry, PathError
from dockerfs_fuse.model.inodes import Changes, Node
from dockerfs_fuse.model.shell import Ack, run_command, upload_command
from dockerfs_fuse.model.tarwrite import (
    END,
    Meta,
    dir_member,
    file_header,
    padding,
    symlink_member,
)

log = logging.getLogger(__name__)

# Bytes of a staged file read (or loaded) at a time.
CHUNK = 1 << 20
# Containers whose having `mv` is remembered; beyond, all are forgotten at once.
TOOLS_KEPT = 4096
# A temporary upload's name: hidden, random, then as much of the name as fits.
TEMP_PREFIX = ".dockerfs-"
NAME_MAX = 255
# Files at most this big are uploaded through the container's shell (their
# bytes escaped into its script, up to 4x as long); bigger ones by PUT, sent
# from the staged file by the kernel.
SMALL_UPLOAD = 64 << 10


class CannotChange(PathError):
    """The engine cannot make this change here: a container that is not
    running, or has no such tool, for what only an exec can do."""

    errno = errno.EPERM


class ToolFailed(PathError):
    """A tool run in the container refused; its errno read from what it said."""

    def __init__(self, what: str, ran: Ran) -> None:
        said = ran.output.decode(errors="replace").strip()
        super().__init__(f"{what}: exit {ran.code}: {said}")
        self.errno = errno_of_output(said)


class ChannelLost(PathError):
    """A change was sent to the container's shell, which never acknowledged
    it: whether it happened is unknown, and doing it again could act twice
    (a rename, a removal), or the shell could not be ended and may still do
    it later (anything)."""

    errno = errno.EIO


class ContainerGone(PathError):
    """The container was removed (or its removal began) while a change was
    on its way: the same answer as for a container removed before."""

    errno = errno.ENOENT


class OtherContainer(PathError):
    """A rename from one container's root/ into another's."""

    errno = errno.EXDEV


class NotAFileToWrite(PathError):
    """A FIFO, a device or a socket under root/: the archive API can replace
    one, never write into it."""

    errno = errno.EROFS


class ReadOnlyImage(PathError):
    """An image's root/ (its helper container is no one's to change)."""

    errno = errno.EROFS


# What a tool's message says, in the words of busybox, dash and GNU coreutils.
_SAID = (
    ("no such file", errno.ENOENT),
    ("directory nonexistent", errno.ENOENT),
    ("not empty", errno.ENOTEMPTY),
    ("is a directory", errno.EISDIR),
    ("not a directory", errno.ENOTDIR),
    ("read-only", errno.EROFS),
    ("no space", errno.ENOSPC),
    ("quota exceeded", errno.ENOSPC),  # as an upload refused for it (docker/writes.py)
    ("cannot overwrite directory", errno.EISDIR),
    ("permission denied", errno.EACCES),
    ("not permitted", errno.EPERM),
    ("invalid argument", errno.EINVAL),
    ("resource busy", errno.EBUSY),
)
# What a shell upload's failure says of its target, which a PUT would say
# too; any other (a tool refused a privilege, a usage error) goes by PUT.
_FINAL = frozenset([errno.EROFS, errno.ENOSPC, errno.EISDIR, errno.ENOTDIR, errno.ENOENT])


def errno_of_output(said: str) -> int:
    """The errno a tool's complaint names (EIO when it names none): read in
    each line's reason, after its last ": ", never in the names before it
    (a temporary file carries the user's)."""
    for line in said.lower().splitlines():
        reason = line.rsplit(": ", 1)[-1]
        code = next((code for words, code in _SAID if words in reason), None)
        if code is not None:
            return code
    return errno.EIO


class WriteBackend(Protocol):
    """The engine's writing calls (docker/writes.py's DockerWrites)."""

    async def put_archive(self, cid: str, directory: str, body: TarBody) -> None: ...
    async def is_running(self, cid: str) -> bool: ...
    async def is_gone(self, cid: str) -> bool: ...
    async def run(self, cid: str, argv: Sequence[str]) -> Ran: ...
    async def open_shell(self, cid: str) -> ShellStream: ...


class Staging:
    """The daemon's private directory of staged files (0700, in $TMPDIR),
    made at the first write; removed at the end if nothing was kept in it."""

    def __init__(self, parent: str | None = None) -> None:
        self._parent = parent  # None: $TMPDIR
        self._dir: str | None = None

    def new_file(self) -> tuple[str, int]:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="dockerfs-writes-", dir=self._parent)
        fd, path = tempfile.mkstemp(prefix="draft-", dir=self._dir)
        return path, fd

    def close(self) -> None:
        if self._dir is None:
            return
        try:
            os.rmdir(self._dir)
        except OSError:
            log.warning("staged files not uploaded are kept in %s", self._dir)


@dataclass(eq=False)
class Draft:
    """A file under root/ open for writing: its content staged on disk."""

    backend: WriteBackend
    cache: EngineCache
    cid: str
    path: str  # in the container
    node: Node
    meta: Meta
    staged: str  # the staged file's path
    fd: int
    size: int = 0
    loaded: bool = False  # whether the staged file holds the content
    dirty: bool = False  # changed since the last upload
    in_container: bool = True  # False until a new file's first upload
    mtime_given: bool = False  # set by utime: uploaded as it is, not as "now"
    unlinked: bool = False  # its name removed: nothing more is uploaded
    opens: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    freed: bool = False
    # Lets go of the helper container that shows the file (a volume's data/).
    release: Callable[[], None] = field(default=lambda: None)


# Where a change goes: the backend, engine, container and path, and the call
# that lets go of the helper container that shows it (a volume's data/).
Where = tuple[WriteBackend, EngineCache, str, str, Callable[[], None]]


class ContainerWrites:
    """Every draft and change under the containers' root/ directories."""

    def __init__(
        self,
        roots: ContainerRoots,
        backend_of: Callable[[EngineCache], WriteBackend | None],
        on_changes: Callable[[Changes], None],
        staging: Staging | None = None,
    ) -> None:
        self.roots = roots
        self.table = roots.table
        self._backend_of = backend_of
        self._on_changes = on_changes
        self.staging = staging or Staging()
        self._drafts: dict[int, Draft] = {}
        self._mv_known: dict[str, bool] = {}
        self.channels = roots.engines.channels

    # -- where --------------------------------------------------------------------------

    def _check_writable(self, node: Node) -> None:
        if not self.roots.writable(node):
            raise ReadOnlyImage(self.roots.path_of(node))

    async def _hold(self, node: Node) -> Where:
        """The backend, engine, container and path of a node under a container's
        root/ (or a volume's data/), and the call that lets go of its helper."""
        self._check_writable(node)
        cache, cid, path, release = await self.roots.hold(node)
        backend = self._backend_of(cache)
        if backend is None:
            release()
            raise ReadOnlyImage(path)
        return backend, cache, cid, path, release

    @contextlib.asynccontextmanager
    async def _located(
        self, node: Node
    ) -> AsyncIterator[tuple[WriteBackend, EngineCache, str, str]]:
        """_hold() for the block."""
        backend, cache, cid, path, release = await self._hold(node)
        try:
            yield backend, cache, cid, path
        finally:
            release()

    def draft_of(self, node: Node) -> Draft | None:
        return self._drafts.get(node.inode)

    def shown_size(self, node: Node) -> int | None:
        """The size stat shows of a file being written (its draft's), else None."""
        draft = self._drafts.get(node.inode)
        return None if draft is None else draft.size

    def pending(self, parent: Node, name: str) -> Node | None:
        """A new file being written that the container has not seen yet."""
        child = (parent.children or {}).get(name)
        if child is None:
            return None
        draft = self._drafts.get(child.inode)
        return child if draft is not None and not draft.in_container else None

    # -- drafts ---------------------------------------------------------------------------

    def _new_draft(self, node: Node, meta: Meta, where: Where, *, in_container: bool) -> Draft:
        """A draft of `node` where _hold() said; it lets go of the helper when freed."""
        backend, cache, cid, path, release = where
        try:
            staged, fd = self.staging.new_file()
        except BaseException:
            release()
            raise
        draft = Draft(backend, cache, cid, path, node, meta, staged, fd, release=release)
        draft.in_container = in_container
        if not in_container:
            draft.loaded = True
        self._drafts[node.inode] = draft
        return draft

    async def create(self, parent: Node, name: str, meta: Meta) -> Draft:
        """A new, empty file, open for writing; the container sees it at its first upload."""
        # Refused (an image's root/) before the table has it; and held first,
        # so that nothing waits between the table having it and its draft.
        backend, cache, cid, directory, release = await self._hold(parent)
        path = posixpath.join(directory, name)
        entry = Entry(
            path=path,
            mode=stat.S_IFREG | stat.S_IMODE(meta.mode),
            uid=meta.uid,
            gid=meta.gid,
            size=0,
            mtime=meta.mtime,
        )
        try:
            node, changes = self.table.set_entry(parent, entry)
        except BaseException:
            release()
            raise
        self._apply(changes)
        where = (backend, cache, cid, path, release)
        draft = self._new_draft(node, meta, where, in_container=False)
        draft.opens += 1
        return draft

    async def open(self, node: Node) -> Draft:
        """The file's draft for one more open for writing (shared by every open)."""
        draft = self._drafts.get(node.inode)
        if draft is None:
            e = node.entry
            if e is None or not e.is_regular:
                raise NotAFileToWrite(node.name)
            where = await self._hold(node)
            draft = self._drafts.get(node.inode)  # another open's, made meanwhile
            if draft is not None:
                where[4]()
            else:
                meta = Meta(e.mode, e.uid, e.gid, e.mtime)
                draft = self._new_draft(node, meta, where, in_container=True)
                draft.size = e.size
        draft.opens += 1
        return draft

    async def _load(self, draft: Draft) -> None:
        """Stage the container's content of the file, once."""
        if draft.loaded:
            return
        file = await self.roots.open(draft.node, to_change=True)
        try:
            offset = 0
            while True:
                data = await file.read(offset, CHUNK)
                if not data:
                    break
                os.pwrite(draft.fd, data, offset)
                offset += len(data)
        finally:
            file.close()
        os.ftruncate(draft.fd, offset)
        draft.size = offset
        draft.loaded = True

    async def read(self, draft: Draft, offset: int, size: int) -> bytes:
        if not draft.loaded:
            # Under the lock, as a write's load: a load still streaming the
            # old content must not land over a write made meanwhile.
            async with draft.lock:
                await self._load(draft)
        return os.pread(draft.fd, min(size, max(0, draft.size - offset)), offset)

    async def write(self, draft: Draft, offset: int, data: bytes, append: bool) -> int:
        # Under the draft's lock: an upload in flight reads the staged file
        # as it sends it, so a write (another writer's) waits for its end
        # rather than tear what is being sent; and the load happens once.
        async with draft.lock:
            await self._load(draft)
            if append:
                offset = draft.size
            written = os.pwrite(draft.fd, data, offset)
            draft.size = max(draft.size, offset + written)
            draft.dirty = True
            draft.mtime_given = False  # written since: its mtime is the upload's
            return written

    async def truncate(self, draft: Draft, size: int) -> None:
        async with draft.lock:  # as write
            if size == 0:
                draft.loaded = True  # nothing of the old content is needed
            await self._load(draft)
            os.ftruncate(draft.fd, size)
            draft.size = size
            draft.dirty = True
            draft.mtime_given = False

    def set_meta(self, draft: Draft, meta: Meta, mtime_given: bool) -> None:
        """A new mode, owner or mtime, uploaded with the content."""
        draft.meta = meta
        draft.mtime_given = draft.mtime_given or mtime_given
        draft.dirty = True

    async def flush(self, draft: Draft) -> None:
        """Upload the draft if it changed since: returns once the engine has
        it. A new file nothing was written to waits for its last close (a
        shell's `>` closes a descriptor of it before writing)."""
        try:
            async with draft.lock:
                if draft.freed or draft.unlinked:
                    return
                if not draft.dirty and (draft.in_container or draft.opens > 0):
                    return
                await self._load(draft)
                # Clean from here: a change made during the upload (a mode
                # set) makes it dirty again, for the next close to send.
                draft.dirty = False
                try:
                    await self._upload(draft)
                except Exception as exc:
                    draft.dirty = True
                    if await self._removed_meanwhile(draft):
                        raise ContainerGone(f"{draft.cid[:12]}: {draft.path}") from exc
                    raise
                except BaseException:
                    draft.dirty = True  # cancelled (unmounting): kept, not freed as sent
                    raise
                draft.in_container = True
                self._uploaded(draft)
        finally:
            if draft.opens <= 0 and not draft.lock.locked():
                self._free(draft)  # closed for good while this upload ran

    async def _removed_meanwhile(self, draft: Draft) -> bool:
        """Whether a refused upload's container was removed (or its removal
        began): the engine then answers whatever step the upload was at (a
        conflict, a cut connection, a failed mv), all meaning ENOENT."""
        try:
            gone = await draft.backend.is_gone(draft.cid)
        except Exception:
            return False  # the first error is the answer
        if gone:
            log.warning(
                "%s: %s: the container was removed during the upload", draft.cid[:12], draft.path
            )
        return gone

    async def release(self, draft: Draft) -> None:
        """One open fewer; the last makes a new file nothing was written to
        (its closes sent nothing), and frees the draft (or keeps a refused
        one's file: a changed one's closes have tried)."""
        draft.opens -= 1
        if draft.opens > 0 or draft.lock.locked():
            return
        if not (draft.in_container or draft.unlinked or draft.freed or draft.dirty):
            try:
                await self.flush(draft)
            except Exception as exc:  # its last close has returned: logged
                log.warning("%s: %s: not created: %s", draft.cid[:12], draft.path, exc)
        self._free(draft)

    def _free(self, draft: Draft) -> None:
        if draft.freed:
            return
        draft.freed = True
        if self._drafts.get(draft.node.inode) is draft:
            del self._drafts[draft.node.inode]
        draft.release()
        os.close(draft.fd)
        if draft.dirty and draft.loaded and not draft.unlinked:
            log.warning(
                "%s: %s: not uploaded; its content is kept in %s",
                draft.cid[:12],
                draft.path,
                draft.staged,
            )
        else:
            with contextlib.suppress(OSError):
                os.unlink(draft.staged)
        if not draft.in_container and not draft.unlinked and draft.node.parent is not None:
            # Never seen by the container: the table forgets it.
            self._apply(self.table.remove_entry(draft.node.parent, draft.node.name))

    async def truncate_path(self, node: Node, size: int) -> None:
        """truncate(2) of a file nobody has open for writing: uploaded at once."""
        draft = await self.open(node)
        try:
            await self.truncate(draft, size)
            await self.flush(draft)
        finally:
            await self.release(draft)

    # -- uploads ----------------------------------------------------------------------

    async def _upload(self, draft: Draft) -> None:
        directory, name = posixpath.split(draft.path)
        if not draft.mtime_given:
            draft.meta = replace(draft.meta, mtime=int(time.time()))
        meta = draft.meta
        backend, cid = draft.backend, draft.cid
        if draft.size <= SMALL_UPLOAD and await self._upload_by_shell(draft, directory, name):
            return
        # A new file has no old content for a reader to see mixed with the
        # new: it is written under its own name, as `docker cp` writes.
        atomic = (
            draft.in_container
            and await backend.is_running(cid)
            and await self._has_mv(backend, cid)
        )
        target = _temp_name(name) if atomic else name
        body = TarBody(
            head=file_header(target, draft.size, meta),
            tail=padding(draft.size) + END,
            fd=draft.fd,
            length=draft.size,
        )
        temp = posixpath.join(directory, target)
        try:
            await backend.put_archive(cid, directory, body)
        except Exception:
            # What a refused upload left: the temporary file, or a new file
            # half written in place (where a tool can remove it).
            if atomic or not draft.in_container:
                with contextlib.suppress(Exception):
                    if atomic or await backend.is_running(cid):
                        await self._run(backend, cid, ["rm", "-f", temp], repeatable=True)
            raise
        if not atomic:
            return
        try:
            ran = await self._run(backend, cid, ["mv", "-f", "-T", temp, draft.path], False)
        except ChannelLost:
            # Whether it was renamed is unknown: if not, the temporary goes.
            with contextlib.suppress(Exception):
                await backend.run(cid, ["rm", "-f", temp])
            raise
        if ran.code != 0:
            with contextlib.suppress(Exception):
                await self._run(backend, cid, ["rm", "-f", temp], repeatable=True)
            raise ToolFailed(f"{cid[:12]}: mv to {draft.path}", ran)

    async def _upload_by_shell(self, draft: Draft, directory: str, name: str) -> bool:
        """Upload a small draft through the container's shell: under a
        temporary name, its mode and owner set, then renamed into place.
        False when it must go by PUT: no channel, a step that failed but for
        a reason the PUT would meet too (a privilege the container's shell
        lacks, a tool missing or too old; the command removed its temporary
        file), or the shell lost before it answered and known to have ended
        (the PUT does it again, whole). ChannelLost when the shell could not
        be ended: the command may still run later, over a newer version."""
        content = os.pread(draft.fd, draft.size, 0)
        if len(content) != draft.size:
            return False
        meta = draft.meta
        temp = posixpath.join(directory, _temp_name(name))
        command = upload_command(
            temp,
            draft.path,
            content,
            meta.mode,
            meta.uid,
            meta.gid,
            meta.mtime if draft.mtime_given else None,
        )
        try:
            ack = await self._by_shell(draft.backend, draft.cid, command)
        except NoChannel:
            return False
        except Unsettled as exc:
            log.warning("%s: %s: %s; not uploaded again", draft.cid[:12], draft.path, exc)
            raise ChannelLost(f"{draft.cid[:12]}: upload of {draft.path}: {exc}") from None
        except LostAck as exc:
            log.info("%s: %s: %s; uploaded by PUT", draft.cid[:12], draft.path, exc)
            return False
        ran = Ran(ack.code, ack.output)
        if ran.code == 0:
            return True
        failed = ToolFailed(f"{draft.cid[:12]}: upload of {draft.path}", ran)
        if failed.errno in _FINAL:
            raise failed
        if not ran.no_tool:
            log.debug("%s; uploaded by PUT", failed)
        return False

    async def _run(self, backend: WriteBackend, cid: str, argv: list[str], repeatable: bool) -> Ran:
        """A tool's run in the container: through its shell, else by an exec.
        A command the shell never acknowledged is run again by exec only if
        `repeatable` (doing it twice does what doing it once does) and its
        shell is known to have ended (else it could still run later, over a
        newer change)."""
        try:
            ack = await self._by_shell(backend, cid, run_command(argv))
        except NoChannel:
            return await backend.run(cid, argv)
        except LostAck as exc:
            if repeatable and not isinstance(exc, Unsettled):
                return await backend.run(cid, argv)
            log.warning("%s: %s: %s; not run again", cid[:12], " ".join(argv), exc)
            raise ChannelLost(f"{cid[:12]}: {argv[0]}: {exc}") from None
        return Ran(ack.code, ack.output)

    async def _by_shell(self, backend: WriteBackend, cid: str, command: str) -> Ack:
        """`command` through the container's shell. A helper (a volume's
        data/) is never started: it has none, and asking would cost an exec
        refused each time one is made."""
        if self.roots.engines.is_helper(cid):
            raise NoChannel("a helper container")
        return await self.channels.command(backend, cid, command)

    async def _has_mv(self, backend: WriteBackend, cid: str) -> bool:
        known = self._mv_known.get(cid)
        if known is None:
            ran = await self._run(backend, cid, ["mv", "--help"], repeatable=True)
            known = not ran.no_tool
            if not known:
                log.info("%s: no mv in the container: files are replaced in place", cid[:12])
            if len(self._mv_known) >= TOOLS_KEPT:
                self._mv_known.clear()
            self._mv_known[cid] = known
        return known

    def _uploaded(self, draft: Draft) -> None:
        """The engine has the new content: the table, the kernel and the
        snapshots say so now."""
        node = draft.node
        meta = draft.meta
        entry = Entry(
            path=draft.path,
            mode=stat.S_IFREG | stat.S_IMODE(meta.mode),
            uid=meta.uid,
            gid=meta.gid,
            size=draft.size,
            mtime=meta.mtime,
        )
        if node.parent is not None and not node.gone:
            _, changes = self.table.set_entry(node.parent, entry)
            self._apply(changes)
        draft.cache.files.wrote(draft.cid, draft.path)
        self._apply(Changes(changed=[node.inode]))

    def _changed(self, cache: EngineCache, cid: str, directory: str, inodes: list[int]) -> None:
        # Snapshots from before the change no longer answer for the directory
        # it was made in (its listing, or an entry's size, changed); the
        # kernel drops what it holds of these inodes.
        cache.files.changed(cid, directory)
        self._apply(Changes(changed=inodes))

    def _apply(self, changes: Changes) -> None:
        if changes:
            self._on_changes(changes)

    # -- whole-path changes --------------------------------------------------------

    async def _put_member(self, parent: Node, name: str, member: bytes) -> tuple[EngineCache, str]:
        async with self._located(parent) as (backend, cache, cid, directory):
            await backend.put_archive(cid, directory, TarBody(head=member, tail=END))
            # The whole directory, not only the member's path (files.wrote):
            # the lookup that follows (_found) must read the new entry as the
            # engine names it, which a probe of an odd name (not UTF-8) may not.
            self._changed(cache, cid, directory, [parent.inode])
            return cache, cid

    async def mkdir(self, parent: Node, name: str, meta: Meta) -> Node:
        await self._put_member(parent, name, dir_member(name, meta))
        return await self._found(parent, name)

    async def symlink(self, parent: Node, name: str, target: bytes, meta: Meta) -> Node:
        await self._put_member(parent, name, symlink_member(name, target, meta))
        return await self._found(parent, name)

    async def _found(self, parent: Node, name: str) -> Node:
        node = await self.roots.lookup(parent, name)
        if node is None:
            raise PathError(f"{name}: not there after the upload")
        return node

    async def _tool(
        self, node: Node, what: str, argv: list[str], repeatable: bool = False
    ) -> tuple[EngineCache, str]:
        """Run a tool in the container of `node`, or refuse (EPERM)."""
        async with self._located(node) as (backend, cache, cid, _):
            try:
                ran = await self._run(backend, cid, argv, repeatable)
            except Conflict:  # not running, or paused: the engine says so, no need to ask
                raise CannotChange(f"{cid[:12]}: {what}: the container is not running") from None
        if ran.no_tool:
            raise CannotChange(f"{cid[:12]}: {what}: no {argv[0]} in the container")
        if ran.code != 0:
            raise ToolFailed(f"{cid[:12]}: {what}", ran)
        return cache, cid

    def _path_in(self, parent: Node, name: str) -> str:
        return posixpath.join(self.roots.path_of(parent), name)

    def _draft_named(self, parent: Node, name: str) -> Draft | None:
        child = (parent.children or {}).get(name)
        return None if child is None else self._drafts.get(child.inode)

    async def unlink(self, parent: Node, name: str) -> None:
        """rm; a file still open for writing is then nameless, as on a local
        disk: its later writes and closes upload nothing."""
        path = self._path_in(parent, name)
        draft = self._draft_named(parent, name)
        if draft is not None:
            async with draft.lock:  # an upload in flight (a last close's) ends first
                if not draft.in_container:
                    draft.unlinked = True  # the container never saw it: nothing to ask
                    self._apply(self.table.remove_entry(parent, name))
                    return
        cache, cid = await self._tool(parent, f"rm {path}", ["rm", "--", path])
        if draft is not None:
            draft.unlinked = True
        self._removed(cache, cid, parent, name)

    async def rmdir(self, parent: Node, name: str) -> None:
        path = self._path_in(parent, name)
        cache, cid = await self._tool(parent, f"rmdir {path}", ["rmdir", "--", path])
        self._removed(cache, cid, parent, name)

    async def rename(self, parent: Node, name: str, new_parent: Node, new_name: str) -> None:
        old, new = self._path_in(parent, name), self._path_in(new_parent, new_name)
        if self.roots.tree_of(parent) is not self.roots.tree_of(new_parent):
            raise OtherContainer(f"{old} -> {new}")
        draft = self._draft_named(parent, name)
        if draft is not None:
            await self.flush(draft)  # what was written goes with it
        # -T: onto a directory means replacing it, never moving into it.
        cache, cid = await self._tool(parent, f"mv {old} {new}", ["mv", "-f", "-T", old, new])
        for d in self._drafts.values():  # later closes upload under the new name
            if (
                d.cache is cache
                and d.cid == cid
                and (d.path == old or d.path.startswith(old + "/"))
            ):
                d.path = new + d.path[len(old) :]
        self._apply(self.table.move_entry(parent, name, new_parent, new_name, new))
        for directory in (parent,) if new_parent is parent else (parent, new_parent):
            self._changed(cache, cid, self.roots.path_of(directory), [directory.inode])

    def _removed(self, cache: EngineCache, cid: str, parent: Node, name: str) -> None:
        self._apply(self.table.remove_entry(parent, name))
        self._changed(cache, cid, self.roots.path_of(parent), [parent.inode])

    async def change_meta(
        self, node: Node, mode: int | None, uid: int | None, gid: int | None, mtime: int | None
    ) -> None:
        """chmod, chown, utime of a path nobody has open for writing: a tool's
        run. Where none can run (a stopped container, a volume's data/, an
        image without the tool), a directory's entry is uploaded again with
        what was asked (`tar -x` sets its directories' times by path, last).
        A file's or a symlink's change stays EPERM: uploading a file again
        to change its mode would replace it in place (the engine removes it
        first), losing its xattrs (a binary's capabilities) and its hard
        links, and leaving it short if the upload fails; through a
        descriptor open for writing its mode and times go with its content."""
        path = self.roots.path_of(node)
        try:
            done = await self._meta_by_tools(node, path, mode, uid, gid, mtime)
        except CannotChange:
            e = node.entry
            if e is None or not e.is_dir or node.parent is None:
                raise
            done = await self._meta_by_upload(node, e, mode, uid, gid, mtime)
        if done is not None:
            self._meta_changed(node, path, done, mode, uid, gid, mtime)

    async def _meta_by_tools(
        self,
        node: Node,
        path: str,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        mtime: int | None,
    ) -> tuple[EngineCache, str] | None:
        done: tuple[EngineCache, str] | None = None
        if uid is not None or gid is not None:
            owner = f"{'' if uid is None else uid}:{'' if gid is None else gid}"
            done = await self._tool(
                node, f"chown {path}", ["chown", "-h", owner, path], repeatable=True
            )
        if mode is not None and not (node.entry is not None and node.entry.is_link):
            done = await self._tool(
                node, f"chmod {path}", ["chmod", f"{stat.S_IMODE(mode):o}", path], repeatable=True
            )
        if mtime is not None:
            done = await self._tool(
                node,
                f"touch {path}",
                ["touch", "-c", "-h", "-d", f"@{mtime}", path],
                repeatable=True,
            )
        return done

    async def _meta_by_upload(
        self,
        node: Node,
        e: Entry,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        mtime: int | None,
    ) -> tuple[EngineCache, str]:
        """The engine's extraction sets an existing directory's mode, owner
        and mtime from its member."""
        meta = Meta(
            stat.S_IMODE(e.mode if mode is None else mode),
            e.uid if uid is None else uid,
            e.gid if gid is None else gid,
            e.mtime if mtime is None else mtime,
        )
        assert node.parent is not None
        return await self._put_member(node.parent, node.name, dir_member(node.name, meta))

    def _meta_changed(
        self,
        node: Node,
        path: str,
        done: tuple[EngineCache, str],
        mode: int | None,
        uid: int | None,
        gid: int | None,
        mtime: int | None,
    ) -> None:
        """The table, a draft's next upload and the kernel keep what was set."""
        cache, cid = done
        parent = node.parent
        if parent is not None and node.entry is not None:
            e = node.entry
            changed = Entry(
                path=e.path,
                mode=stat.S_IFMT(e.mode) | stat.S_IMODE(e.mode if mode is None else mode),
                uid=e.uid if uid is None else uid,
                gid=e.gid if gid is None else gid,
                size=e.size,
                mtime=e.mtime if mtime is None else mtime,
                link=e.link,
                rdev=e.rdev,
            )
            _, changes = self.table.set_entry(parent, changed)
            self._apply(changes)
        draft = self._drafts.get(node.inode)
        if draft is not None:  # its next upload keeps what was set
            m = draft.meta
            draft.meta = Meta(
                m.mode if mode is None else mode & 0o7777,
                m.uid if uid is None else uid,
                m.gid if gid is None else gid,
                m.mtime if mtime is None else mtime,
            )
            draft.mtime_given = draft.mtime_given or mtime is not None
        self._changed(cache, cid, posixpath.dirname(path), [node.inode])

    def close(self) -> None:
        """At unmount: drafts still open are kept (logged), the directory removed if empty."""
        for draft in list(self._drafts.values()):
            self._free(draft)
        self.channels.close()
        self.staging.close()


def _temp_name(name: str) -> str:
    """A hidden name in the same directory, unlikely to be anyone's."""
    prefix = f"{TEMP_PREFIX}{secrets.token_hex(4)}-"
    return prefix + os.fsdecode(os.fsencode(name)[: NAME_MAX - len(prefix)])
