"""Tversion, Tauth, Tattach, Twalk, Tclunk, Tremove: starting a session and
naming files in it."""

from __future__ import annotations

import errno
import re

import trio

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Message
from dockerfs_fuse.ninep.export import NinePError, denied
from dockerfs_fuse.ninep.session import MAX_MSIZE, MIN_MSIZE, Fid, Session


def version_reply(requested: str) -> tuple[Dialect | None, str]:
    """The dialect to speak for a client's version string, per version(5): a
    suffix after the first period is dropped unless we speak it, and 9Pnnnn
    is answered 9P2000 when nnnn is 2000 or more."""
    for dialect in (Dialect.L, Dialect.U):
        if requested == dialect.value:
            return dialect, dialect.value
    base = requested.split(".", 1)[0]
    number = re.fullmatch(r"9P([0-9]+)", base)
    if number and int(number.group(1)) >= 2000:
        return Dialect.P2000, Dialect.P2000.value
    return None, "unknown"


def version(session: Session, msg: codec.Tversion) -> tuple[Message, Dialect]:
    """Tversion starts a new session: every fid is clunked, whatever the
    outcome (the connection has already aborted what was outstanding).
    Returns the reply and the dialect to encode it in (a refusal speaks the
    dialect asked for)."""
    session.clunk_all()
    asked = {d.value: d for d in Dialect}.get(msg.version, Dialect.P2000)
    if msg.msize < MIN_MSIZE:
        session.dialect = None
        reason = f"msize {msg.msize} too small: at least {MIN_MSIZE}"
        if asked is Dialect.L:
            return codec.Rlerror(tag=msg.tag, ecode=errno.EINVAL), asked
        return codec.Rerror(tag=msg.tag, ename=reason, errno=errno.EINVAL), asked
    session.dialect, name = version_reply(msg.version)
    session.msize = min(msg.msize, MAX_MSIZE)
    return codec.Rversion(tag=msg.tag, msize=session.msize, version=name), asked


async def auth(session: Session, msg: codec.Tauth) -> Message:
    # ENOENT is what diod's client library reads as "auth not required".
    raise NinePError(errno.ENOENT, "no authentication required")


async def attach(session: Session, msg: codec.Tattach) -> Message:
    if msg.afid != codec.NOFID:
        raise NinePError(errno.EINVAL, "no authentication required")
    session.check_new_fid(msg.fid)
    # The attach name selects a directory of the export: one per connection.
    export = await session.blocking(session.whole_export.subtree, msg.aname)
    if session.fids and export.root != session.export.root:
        raise NinePError(errno.EINVAL, "one attach name per connection")
    session.export = export
    parts, info = await session.blocking(session.export.view, (), session.negotiated())
    qid = session.export.qid(info)
    await trio.lowlevel.checkpoint_if_cancelled()
    session.check_new_fid(msg.fid)
    session.fids[msg.fid] = Fid(parts, qid)
    return codec.Rattach(tag=msg.tag, qid=qid)


async def walk(session: Session, msg: codec.Twalk) -> Message:
    fid = session.fid(msg.fid)
    if fid.handle is not None and msg.newfid == msg.fid:
        # Walking from an open fid is tolerated (diod's tools do it), but
        # replacing an open fid would strand its handle.
        raise NinePError(errno.EBADF, "cannot walk an open fid onto itself")
    if msg.newfid != msg.fid:
        session.check_new_fid(msg.newfid)
    if len(msg.wnames) > codec.MAXWELEM:
        raise NinePError(errno.EINVAL, "too many names in walk")
    if not msg.wnames:
        session.fids[msg.newfid] = Fid(fid.parts, fid.qid)
        return codec.Rwalk(tag=msg.tag, qids=())
    steps = await session.blocking(session.export.walk, fid.parts, msg.wnames, session.negotiated())
    await trio.lowlevel.checkpoint_if_cancelled()
    if len(steps) == len(msg.wnames):
        if msg.newfid != msg.fid:
            session.check_new_fid(msg.newfid)
        session.fids[msg.newfid] = Fid(*steps[-1])
    return codec.Rwalk(tag=msg.tag, qids=tuple(qid for _, qid in steps))


async def clunk(session: Session, msg: codec.Tclunk) -> Message:
    session.fid(msg.fid)
    session.clunk(msg.fid)
    return codec.Rclunk(tag=msg.tag)


async def remove(session: Session, msg: codec.Tremove) -> Message:
    # remove(5): the fid is clunked even when the remove fails.
    session.fid(msg.fid)
    session.clunk(msg.fid)
    raise denied()
