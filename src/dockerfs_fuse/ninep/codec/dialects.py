"""Which requests each dialect speaks.  9P2000.L drops open/create/stat/wstat
(Linux never sends them) but keeps the rest of the 9P2000 core."""

from __future__ import annotations

from dockerfs_fuse.ninep.codec import classic, linux
from dockerfs_fuse.ninep.codec.spec import Message
from dockerfs_fuse.ninep.codec.wire import Dialect

_CORE = {
    classic.Tversion, classic.Tauth, classic.Tattach, classic.Tflush, classic.Twalk,
    classic.Tread, classic.Twrite, classic.Tclunk, classic.Tremove,
}  # fmt: skip
_CLASSIC = {classic.Topen, classic.Tcreate, classic.Tstat, classic.Twstat}
_LINUX = {
    linux.Tstatfs, linux.Tlopen, linux.Tlcreate, linux.Tsymlink, linux.Tmknod, linux.Trename,
    linux.Treadlink, linux.Tgetattr, linux.Tsetattr, linux.Txattrwalk, linux.Txattrcreate,
    linux.Treaddir, linux.Tfsync, linux.Tlock, linux.Tgetlock, linux.Tlink, linux.Tmkdir,
    linux.Trenameat, linux.Tunlinkat,
}  # fmt: skip
REQUESTS: dict[Dialect, frozenset[type[Message]]] = {
    Dialect.P2000: frozenset(_CORE | _CLASSIC),
    Dialect.U: frozenset(_CORE | _CLASSIC),
    Dialect.L: frozenset(_CORE | _LINUX),
}

__all__ = ["REQUESTS"]
