"""A directory seen as 9P files: paths, qids, stat records, dirents, and the
write policy.

Every function here blocks on the file system, so the handlers call them
in worker threads (resources.py).  Nothing here knows about connections or tags.

A walked-to file is named by `parts`, its path below the root with every
symlink that was walked *through* already resolved.  Keeping parts free of
intermediate symlinks is what makes `..` a lexical pop and keeps every walk
inside the root.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat as st
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Dirent, Qid, Stat

Parts = tuple[str, ...]

V9FS_MAGIC = 0x01021997
MAX_OFFSET = 2**63 - 1
# Linux d_type values for Rreaddir.
_DT = {
    st.S_IFDIR: 4,
    st.S_IFREG: 8,
    st.S_IFLNK: 10,
    st.S_IFIFO: 1,
    st.S_IFCHR: 2,
    st.S_IFBLK: 6,
    st.S_IFSOCK: 12,
}
_WRITE_BITS = st.S_IWUSR | st.S_IWGRP | st.S_IWOTH

# Plan 9 wording for the errors a 9P2000 client is most likely to show a user.
_PLAN9_ERRORS = {
    errno.ENOENT: "file does not exist",
    errno.EPERM: "permission denied",
    errno.EACCES: "permission denied",
    errno.EROFS: "permission denied",
    errno.ENOTDIR: "not a directory",
    errno.EISDIR: "is a directory",
    errno.EBADF: "fid unknown or out of range",
    errno.EEXIST: "file already exists",
}


# The attach name diod's clients send when not given one (see Export.subtree).
DIOD_DEFAULT_ANAME = "ctl"


class NinePError(Exception):
    """A request that fails: an errno for 9P2000.u/.L and a string for 9P2000."""

    def __init__(self, code: int, message: str | None = None) -> None:
        self.errno = code
        self.ename = message or _PLAN9_ERRORS.get(code) or os.strerror(code).lower()
        super().__init__(self.ename)

    @classmethod
    def from_os(cls, exc: OSError) -> NinePError:
        return cls(exc.errno or errno.EIO)


def check_offset(offset: int) -> None:
    """9P offsets are unsigned 64-bit, Linux's are signed: the top half is
    no file position at all."""
    if offset > MAX_OFFSET:
        raise NinePError(errno.EINVAL)


def denied() -> NinePError:
    """The answer to every write the policy refuses."""
    return NinePError(errno.EPERM, "permission denied")


@lru_cache(maxsize=256)
def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class OpenFile:
    """An open regular file or FIFO.

    A FIFO stays non-blocking (`pollable`): the server waits for it to be
    readable in trio, where a flush cancels the wait at once, and reads it
    without a thread.  Other files are read in threads, and closing is
    deferred while a thread still uses the descriptor, so a Tclunk racing a
    slow Tread can never make that read land on a recycled descriptor number;
    the last user closes it.  Only the server's trio thread calls acquire,
    release and close."""

    def __init__(self, fd: int, writable: bool, pollable: bool = False) -> None:
        self.fd = fd
        self.writable = writable
        self.pollable = pollable
        self.on_close: Callable[[], None] | None = None  # once the fd is really closed
        self._users = 0
        self._closing = False

    def acquire(self) -> None:
        if self._closing:
            raise NinePError(errno.EBADF)
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._closing and self._users == 0:
            self._close_now()

    def close(self) -> None:
        self._closing = True
        if self._users == 0:
            self._close_now()

    def _close_now(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.on_close is not None:
                self.on_close()

    def read(self, offset: int, count: int) -> bytes:
        """A positioned read; blocks (call it in a thread). A stream (logs.follow,
        an exec session's files: ESPIPE) has no offsets and is read in order."""
        check_offset(offset)
        try:
            try:
                return os.pread(self.fd, count, offset)
            except OSError as exc:
                if exc.errno != errno.ESPIPE:
                    raise
                return os.read(self.fd, count)
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    def write(self, offset: int, data: bytes) -> int:
        """A positioned write; blocks (call it in a thread); a stream's in order."""
        check_offset(offset)
        try:
            try:
                return os.pwrite(self.fd, data, offset)
            except OSError as exc:
                if exc.errno != errno.ESPIPE:
                    raise
                return os.write(self.fd, data)
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    def read_ready(self, count: int) -> bytes:
        """A FIFO read that never blocks: BlockingIOError means wait for it to
        be readable (a stream has no offsets, so the offset is ignored)."""
        try:
            return os.read(self.fd, count)
        except BlockingIOError:
            raise
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    def write_ready(self, data: bytes) -> int:
        """A FIFO write that never blocks: BlockingIOError means wait."""
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            raise
        except OSError as exc:
            raise NinePError.from_os(exc) from exc


@dataclass
class OpenDir:
    """Directory listing state of one open fid.  The listing is taken afresh at
    offset 0 and kept, so offsets stay meaningful while a client pages through
    it even if entries come and go meanwhile."""

    records: list[bytes] = field(default_factory=list)  # 9P2000/.u stat records
    boundaries: list[int] = field(default_factory=list)  # byte offset of each record
    dirents: list[Dirent] = field(default_factory=list)  # 9P2000.L entries
    # Where the last read ended and how much of its count it left unused:
    # Linux tops a short read up with a read of exactly that remainder.
    top_up: tuple[int, int] = (-1, 0)


class Export:
    """The exported directory and the policy for what 9P may do to it."""

    def __init__(self, directory: str, allow_control: bool = False) -> None:
        self.root = os.path.realpath(directory)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(directory)
        self.root_dev = os.stat(self.root).st_dev
        self.allow_control = allow_control

    # ------------------------------------------------------------- naming

    def path(self, parts: Parts) -> str:
        return os.path.join(self.root, *parts)

    def _confined(self, real: str) -> Parts | None:
        """parts for a resolved path, or None when it lies outside the root."""
        if real == self.root:
            return ()
        if not real.startswith(self.root.rstrip("/") + "/"):
            return None
        return tuple(os.path.relpath(real, self.root).split(os.sep))

    def _resolve(self, parts: Parts) -> Parts:
        resolved = self._confined(os.path.realpath(self.path(parts)))
        if resolved is None:
            raise NinePError(errno.ENOENT)
        return resolved

    def subtree(self, aname: str) -> Export:
        """The export an attach name selects: the directory it names inside
        this one, walked and confined like every walk; "" is the whole export.

        diod's clients (diodls, diodcat) attach with "ctl" unless given -a:
        diod's own control file system. Here that is the whole export, unless
        the export has a directory of that name, so they work with no -a.
        """
        try:
            return self._subtree(aname)
        except NinePError as exc:
            if aname == DIOD_DEFAULT_ANAME:
                return self
            raise NinePError(
                exc.errno,
                f"unknown attach name {aname!r} ({exc.ename}): an attach name is a "
                'directory of the export, "" the whole export',
            ) from None

    def _subtree(self, aname: str) -> Export:
        parts: Parts = ()
        for name in aname.split("/"):
            if name:
                parts = self._step(parts, name, Dialect.P2000)
        if not parts:
            return self
        parts = self._resolve(parts)
        if not st.S_ISDIR(self.lstat(parts).st_mode):
            raise NinePError(errno.ENOTDIR)
        return Export(self.path(parts), self.allow_control)

    def lstat(self, parts: Parts) -> os.stat_result:
        try:
            return os.lstat(self.path(parts))
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    def view(self, parts: Parts, dialect: Dialect) -> tuple[Parts, os.stat_result]:
        """What a client of `dialect` sees at parts: 9P2000 has no symlinks, so
        they are followed there (if they stay inside the root)."""
        info = self.lstat(parts)
        if dialect is Dialect.P2000 and st.S_ISLNK(info.st_mode):
            parts = self._resolve(parts)
            info = self.lstat(parts)
        return parts, info

    def qid(self, info: os.stat_result) -> Qid:
        """Same file, same qid: the inode number, tagged with the device when the
        tree spans file systems, and a version that moves when the file does."""
        path = info.st_ino
        if info.st_dev != self.root_dev:
            path ^= (info.st_dev & 0xFFFF) << 48
        kind = codec.QTFILE
        if st.S_ISDIR(info.st_mode):
            kind = codec.QTDIR
        elif st.S_ISLNK(info.st_mode):
            kind = codec.QTSYMLINK
        version = 0 if kind == codec.QTDIR else (info.st_mtime_ns // 1000 ^ info.st_size)
        return Qid(kind, version & 0xFFFFFFFF, path & 0xFFFFFFFFFFFFFFFF)

    def walk(
        self, parts: Parts, names: tuple[str, ...], dialect: Dialect
    ) -> list[tuple[Parts, Qid]]:
        """One (parts, qid) per name walked; stops at the first failure.  Raises
        only when the very first name fails, as walk(5) wants."""
        steps: list[tuple[Parts, Qid]] = []
        for name in names:
            try:
                parts = self._step(parts, name, dialect)
                steps.append((parts, self.qid(self.view(parts, dialect)[1])))
            except NinePError:
                if not steps:
                    raise
                break
        return steps

    def _step(self, parts: Parts, name: str, dialect: Dialect) -> Parts:
        here = self.lstat(parts)
        if st.S_ISLNK(here.st_mode):
            parts = self._resolve(parts)  # walking through a link: follow it
            here = self.lstat(parts)
        if not st.S_ISDIR(here.st_mode):
            raise NinePError(errno.ENOTDIR)
        if name == "..":
            return parts[:-1]
        if name == ".":
            return parts  # not special in 9P, but diod's tools walk it
        if name == "" or "/" in name or "\0" in name:
            raise NinePError(errno.ENOENT)
        target = (*parts, name)
        self.lstat(target)
        return target

    # ---------------------------------------------------------- attributes

    def stat(self, parts: Parts, dialect: Dialect) -> Stat:
        parts, info = self.view(parts, dialect)
        return self._stat_record(parts, info, dialect)

    def _stat_record(self, parts: Parts, info: os.stat_result, dialect: Dialect) -> Stat:
        mode = info.st_mode & 0o777
        fmt = st.S_IFMT(info.st_mode)
        mode |= {
            st.S_IFDIR: codec.DMDIR,
            st.S_IFLNK: codec.DMSYMLINK,
            st.S_IFIFO: codec.DMNAMEDPIPE,
            st.S_IFSOCK: codec.DMSOCKET,
            st.S_IFCHR: codec.DMDEVICE,
            st.S_IFBLK: codec.DMDEVICE,
        }.get(fmt, 0)
        extension = ""
        if dialect is Dialect.U:
            mode |= codec.DMSETUID if info.st_mode & st.S_ISUID else 0
            mode |= codec.DMSETGID if info.st_mode & st.S_ISGID else 0
            extension = self._extension(parts, info)
        else:
            mode &= ~(codec.DMSYMLINK | codec.DMDEVICE | codec.DMNAMEDPIPE | codec.DMSOCKET)
        return Stat(
            type=0,
            dev=0,
            qid=self.qid(info),
            mode=mode,
            atime=max(0, int(info.st_atime)) & 0xFFFFFFFF,
            mtime=max(0, int(info.st_mtime)) & 0xFFFFFFFF,
            length=0 if st.S_ISDIR(info.st_mode) else info.st_size,
            name=parts[-1] if parts else "/",
            uid=_user_name(info.st_uid),
            gid=_group_name(info.st_gid),
            muid=_user_name(info.st_uid),
            extension=extension,
            n_uid=info.st_uid if dialect is Dialect.U else codec.NONUNAME,
            n_gid=info.st_gid if dialect is Dialect.U else codec.NONUNAME,
            n_muid=info.st_uid if dialect is Dialect.U else codec.NONUNAME,
        )

    def _extension(self, parts: Parts, info: os.stat_result) -> str:
        """9P2000.u's extra stat string: link target or device numbers."""
        if st.S_ISLNK(info.st_mode):
            return self.readlink(parts)
        if st.S_ISCHR(info.st_mode) or st.S_ISBLK(info.st_mode):
            kind = "c" if st.S_ISCHR(info.st_mode) else "b"
            return f"{kind} {os.major(info.st_rdev)} {os.minor(info.st_rdev)}"
        return ""

    def getattr(self, parts: Parts, tag: int) -> codec.Rgetattr:
        info = self.lstat(parts)
        return codec.Rgetattr(
            tag=tag,
            valid=codec.GETATTR_BASIC,
            qid=self.qid(info),
            mode=info.st_mode,
            uid=info.st_uid,
            gid=info.st_gid,
            nlink=info.st_nlink,
            rdev=info.st_rdev,
            size=info.st_size,
            blksize=info.st_blksize,
            blocks=info.st_blocks,
            atime_sec=max(0, info.st_atime_ns // 1_000_000_000),
            atime_nsec=info.st_atime_ns % 1_000_000_000,
            mtime_sec=max(0, info.st_mtime_ns // 1_000_000_000),
            mtime_nsec=info.st_mtime_ns % 1_000_000_000,
            ctime_sec=max(0, info.st_ctime_ns // 1_000_000_000),
            ctime_nsec=info.st_ctime_ns % 1_000_000_000,
        )

    def statfs(self, parts: Parts, tag: int) -> codec.Rstatfs:
        try:
            vfs = os.statvfs(self.path(parts))
        except OSError as exc:
            raise NinePError.from_os(exc) from exc
        return codec.Rstatfs(
            tag=tag,
            type=V9FS_MAGIC,
            bsize=vfs.f_bsize,
            blocks=vfs.f_blocks,
            bfree=vfs.f_bfree,
            bavail=vfs.f_bavail,
            files=vfs.f_files,
            ffree=vfs.f_ffree,
            fsid=vfs.f_fsid & 0xFFFFFFFFFFFFFFFF,
            namelen=vfs.f_namemax,
        )

    def readlink(self, parts: Parts) -> str:
        try:
            return os.readlink(self.path(parts))
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    # ---------------------------------------------------------- opening

    def open(
        self, parts: Parts, dialect: Dialect, read: bool, write: bool, truncate: bool
    ) -> OpenFile | OpenDir:
        """Open for a Topen/Tlopen; refuses what the write policy forbids and any
        file type whose open could hang or reach a device."""
        parts, info = self.view(parts, dialect)
        if write or truncate:
            self.check_writable(info)
        if st.S_ISDIR(info.st_mode):
            if write or truncate:
                raise NinePError(errno.EISDIR)
            return OpenDir()
        if not (st.S_ISREG(info.st_mode) or st.S_ISFIFO(info.st_mode)):
            raise denied()
        access = os.O_RDWR if read and write else os.O_WRONLY if write else os.O_RDONLY
        flags = access | os.O_NOFOLLOW | os.O_CLOEXEC
        if truncate and st.S_ISREG(info.st_mode):
            flags |= os.O_TRUNC
        try:
            # A FIFO open blocks until a writer comes: open without waiting,
            # and keep the FIFO non-blocking so that reads wait in trio.
            fd = os.open(self.path(parts), flags | os.O_NONBLOCK)
        except OSError as exc:
            raise NinePError.from_os(exc) from exc
        try:
            pollable = st.S_ISFIFO(os.fstat(fd).st_mode)
            if not pollable:
                os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            raise NinePError.from_os(exc) from exc
        return OpenFile(fd, writable=write, pollable=pollable)

    def check_writable(self, info: os.stat_result) -> None:
        """--allow-control lets writes through, and only to files that carry a
        write bit in DIRECTORY; whoever reaches the socket can drive Docker, so
        the default stays read-only."""
        if not self.allow_control:
            raise denied()
        if st.S_ISDIR(info.st_mode):
            return
        if not info.st_mode & _WRITE_BITS:
            raise denied()

    def truncate(self, parts: Parts, size: int) -> None:
        """A truncating open's size change. A link is the file it leads to, as
        9P2000 shows it (`echo stop > web/ctl`); .u and .L clients follow links
        themselves and never truncate one."""
        check_offset(size)
        parts, info = self.view(parts, Dialect.P2000)
        self.check_writable(info)
        if not st.S_ISREG(info.st_mode):
            raise denied()
        try:
            os.truncate(self.path(parts), size)
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    # ---------------------------------------------------------- listings

    def _entries(self, parts: Parts) -> list[str]:
        try:
            return sorted(os.listdir(self.path(parts)))
        except OSError as exc:
            raise NinePError.from_os(exc) from exc

    def stat_records(self, parts: Parts, dialect: Dialect) -> list[bytes]:
        """Encoded stat records of a directory's entries, for 9P2000/.u reads.

        9P2000 shows a link's target in its place, so a link into an unlisted
        `.live` directory is left out of its listings (still walked by name):
        a Plan 9 `du -a` or `grep -r` must not open what the link keeps
        recursive tools away from (see tree.LIVE)."""
        parts, _ = self.view(parts, dialect)
        records = []
        for name in self._entries(parts):
            try:
                if dialect is Dialect.P2000 and self._leads_into_live((*parts, name)):
                    continue
                _, info = self.view((*parts, name), dialect)
                record = self._stat_record((*parts, name), info, dialect)
            except NinePError:
                continue  # vanished, or a link leading out of the root
            records.append(codec.encode_stat(record, dialect))
        return records

    def _leads_into_live(self, parts: Parts) -> bool:
        if not st.S_ISLNK(self.lstat(parts).st_mode):
            return False
        return LIVE in self.readlink(parts).split("/")

    def dirents(self, parts: Parts) -> list[Dirent]:
        """A 9P2000.L listing with "." and "..", each entry's offset being the
        cookie that resumes right after it."""
        names = [".", "..", *self._entries(parts)]
        entries: list[Dirent] = []
        for name in names:
            target = parts if name == "." else parts[:-1] if name == ".." else (*parts, name)
            try:
                info = self.lstat(target)
            except NinePError:
                continue
            kind = _DT.get(st.S_IFMT(info.st_mode), 0)
            entries.append(Dirent(self.qid(info), len(entries) + 1, kind, name))
        return entries
