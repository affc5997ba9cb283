"""One small handler per 9P request, apart from the connection that reads
them: `HANDLERS[type(msg)](session, msg)` returns the reply or raises
NinePError.  A request with no handler of its own is refused as a write.

    fids   version, auth, attach, walk, clunk, remove
    io     open, lopen, read, readdir, write
    attrs  stat, wstat, getattr, setattr, statfs, readlink, xattrs, fsync, locks
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Message
from dockerfs_fuse.ninep.handlers import attrs, fids, io
from dockerfs_fuse.ninep.session import Session

Handler = Callable[[Session, Any], Awaitable[Message]]

HANDLERS: dict[type[Message], Handler] = {
    codec.Tauth: fids.auth,
    codec.Tattach: fids.attach,
    codec.Twalk: fids.walk,
    codec.Tclunk: fids.clunk,
    codec.Tremove: fids.remove,
    codec.Topen: io.open,
    codec.Tlopen: io.lopen,
    codec.Tread: io.read,
    codec.Treaddir: io.readdir,
    codec.Twrite: io.write,
    codec.Tstat: attrs.stat,
    codec.Twstat: attrs.wstat,
    codec.Tgetattr: attrs.getattr,
    codec.Tsetattr: attrs.setattr,
    codec.Tstatfs: attrs.statfs,
    codec.Treadlink: attrs.readlink,
    codec.Txattrwalk: attrs.refuse_xattr,
    codec.Txattrcreate: attrs.refuse_xattr,
    codec.Tfsync: attrs.fsync,
    codec.Tlock: attrs.lock,
    codec.Tgetlock: attrs.getlock,
}


def handler_for(msg: Message) -> Handler:
    """The handler of a request that its dialect speaks (Tversion and Tflush
    are the connection's own)."""
    return HANDLERS.get(type(msg), attrs.refuse)
