"""Tar members written for `PUT /containers/{id}/archive`: headers only, pure.

The engine's only call that adds or replaces a path is an upload of a tar,
extracted into a directory of the container. A regular file's body is
streamed from its staged copy on disk (engine/writes.py) between its header
and its padding, so nothing here ever holds a body. Python's tarfile writes
the headers (PAX for long or non-ASCII names and large sizes), as the
engine's own Go archive/tar reads them.
"""

from __future__ import annotations

import os
import stat
import tarfile
from dataclasses import dataclass

BLOCK = 512
# Two zero blocks end an archive.
END = b"\0" * (2 * BLOCK)


@dataclass(frozen=True, slots=True)
class Meta:
    """What a member's header says of it besides its name and body."""

    mode: int  # permission bits (setuid, setgid, sticky included)
    uid: int
    gid: int
    mtime: int  # seconds


def _info(name: str, meta: Meta) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(meta.mode)
    info.uid, info.gid, info.mtime = meta.uid, meta.gid, meta.mtime
    info.uname = info.gname = ""
    return info


def _header(info: tarfile.TarInfo) -> bytes:
    # surrogateescape: a name is the container's bytes, os.fsdecode'd.
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def file_header(name: str, size: int, meta: Meta) -> bytes:
    """The header of a regular file `name` (relative to the upload's
    directory) whose `size` bytes follow it."""
    info = _info(name, meta)
    info.type = tarfile.REGTYPE
    info.size = size
    return _header(info)


def padding(size: int) -> bytes:
    """The zeros after a body of `size` bytes, to the next block."""
    return b"\0" * (-size % BLOCK)


def dir_member(name: str, meta: Meta) -> bytes:
    """A whole directory member (no body)."""
    info = _info(name, meta)
    info.type = tarfile.DIRTYPE
    return _header(info)


def symlink_member(name: str, target: bytes, meta: Meta) -> bytes:
    """A whole symlink member: `target` verbatim, as the container resolves it."""
    info = _info(name, meta)
    info.type = tarfile.SYMTYPE
    info.linkname = os.fsdecode(target)
    return _header(info)
