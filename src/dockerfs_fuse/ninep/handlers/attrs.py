"""Attributes and the rest of what a read-only export answers: Tstat, Twstat,
Tgetattr, Tsetattr, Tstatfs, Treadlink, the xattr pair, Tfsync and locks.
Creating, linking, renaming and removing are refused (`refuse`): the export
mirrors a tree that only Docker changes."""

from __future__ import annotations

import errno

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Message
from dockerfs_fuse.ninep.export import NinePError, denied
from dockerfs_fuse.ninep.session import Session

_DONT_TOUCH_16 = 0xFFFF  # stat(5): a wstat field of all ones means "leave as is"
_DONT_TOUCH_32 = 0xFFFFFFFF
_DONT_TOUCH_64 = 0xFFFFFFFFFFFFFFFF
_F_UNLCK = 2  # Rgetlock's type when no lock conflicts


async def refuse(session: Session, msg: Message) -> Message:
    """Every request that would change the tree."""
    raise denied()


async def stat(session: Session, msg: codec.Tstat) -> Message:
    fid = session.fid(msg.fid)
    record = await session.blocking(session.export.stat, fid.parts, session.negotiated())
    return codec.Rstat(tag=msg.tag, stat=record)


async def wstat(session: Session, msg: codec.Twstat) -> Message:
    """Only two wstats do anything here: the all-"don't touch" one, which
    stat(5) defines as a sync, and (with --allow-control) a change of
    length alone, which is how a truncating open arrives."""
    fid = session.fid(msg.fid)
    s = msg.stat
    keeps_metadata = (
        s.type == _DONT_TOUCH_16
        and s.dev == _DONT_TOUCH_32
        and s.mode == _DONT_TOUCH_32
        and s.name == ""
        and s.uid == ""
        and s.gid == ""
    )
    keeps_times = s.atime == _DONT_TOUCH_32 and s.mtime == _DONT_TOUCH_32
    keeps_length = s.length == _DONT_TOUCH_64
    if keeps_metadata and keeps_times and keeps_length:
        return codec.Rwstat(tag=msg.tag)
    if not keeps_metadata or keeps_length:
        raise denied()
    await session.blocking(session.export.truncate, fid.parts, s.length)
    return codec.Rwstat(tag=msg.tag)


async def getattr(session: Session, msg: codec.Tgetattr) -> Message:
    fid = session.fid(msg.fid)
    return await session.blocking(session.export.getattr, fid.parts, msg.tag)


async def setattr(session: Session, msg: codec.Tsetattr) -> Message:
    """Like wstat: only a size change gets through, and only with
    --allow-control; time updates that come with it are ignored."""
    fid = session.fid(msg.fid)
    ownership = codec.SETATTR_MODE | codec.SETATTR_UID | codec.SETATTR_GID
    if msg.valid & ownership or not msg.valid & codec.SETATTR_SIZE:
        raise denied()
    await session.blocking(session.export.truncate, fid.parts, msg.size)
    return codec.Rsetattr(tag=msg.tag)


async def statfs(session: Session, msg: codec.Tstatfs) -> Message:
    fid = session.fid(msg.fid)
    return await session.blocking(session.export.statfs, fid.parts, msg.tag)


async def readlink(session: Session, msg: codec.Treadlink) -> Message:
    fid = session.fid(msg.fid)
    target = await session.blocking(session.export.readlink, fid.parts)
    return codec.Rreadlink(tag=msg.tag, target=target)


async def refuse_xattr(session: Session, msg: Message) -> Message:
    raise NinePError(errno.EOPNOTSUPP)


async def fsync(session: Session, msg: codec.Tfsync) -> Message:
    session.fid(msg.fid)
    return codec.Rfsync(tag=msg.tag)


async def lock(session: Session, msg: codec.Tlock) -> Message:
    """Locks are granted and not kept: nothing here writes, so nothing to guard."""
    session.fid(msg.fid)
    return codec.Rlock(tag=msg.tag, status=0)


async def getlock(session: Session, msg: codec.Tgetlock) -> Message:
    session.fid(msg.fid)
    return codec.Rgetlock(
        tag=msg.tag,
        type=_F_UNLCK,
        start=msg.start,
        length=msg.length,
        proc_id=msg.proc_id,
        client_id=msg.client_id,
    )
