"""A container's files as its archive's tar headers describe them: pure, no I/O.

`GET /containers/{id}/archive?path=P` answers with a tar of P's subtree.
These turn its members into entries (`Entry`, a path's stat), say where in
the container each is (`member_path`), keep symlinks inside the container's
root/ wherever it is mounted (`contained_target`), and name the answers a
path request has that are errnos, not Docker's fault (`PathError`).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from dataclasses import dataclass

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
)


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
