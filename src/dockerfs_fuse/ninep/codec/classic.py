"""The 9P2000 messages, with the fields 9P2000.u adds (spec suffix `/u`) and
the one 9P2000.L keeps from .u (`/uL`).  One spec string per message drives
both its encoding and its decoding (spec.py)."""

from __future__ import annotations

from dockerfs_fuse.ninep.codec.constants import NONUNAME
from dockerfs_fuse.ninep.codec.spec import Message, message
from dockerfs_fuse.ninep.codec.wire import Qid, Stat


# fmt: off
@message(100, "msize:u32 version:s")
class Tversion(Message):
    msize: int
    version: str

@message(101, "msize:u32 version:s")
class Rversion(Message):
    msize: int
    version: str

@message(102, "afid:u32 uname:s aname:s n_uname:u32/uL")
class Tauth(Message):
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME

@message(103, "aqid:qid")
class Rauth(Message):
    aqid: Qid

@message(104, "fid:u32 afid:u32 uname:s aname:s n_uname:u32/uL")
class Tattach(Message):
    fid: int
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME

@message(105, "qid:qid")
class Rattach(Message):
    qid: Qid

@message(107, "ename:s errno:u32/u")
class Rerror(Message):
    ename: str
    errno: int = 0

@message(108, "oldtag:u16")
class Tflush(Message):
    oldtag: int

@message(109)
class Rflush(Message):
    pass

@message(110, "fid:u32 newfid:u32 wnames:strs")
class Twalk(Message):
    fid: int
    newfid: int
    wnames: tuple[str, ...]

@message(111, "qids:qids")
class Rwalk(Message):
    qids: tuple[Qid, ...]

@message(112, "fid:u32 mode:u8")
class Topen(Message):
    fid: int
    mode: int

@message(113, "qid:qid iounit:u32")
class Ropen(Message):
    qid: Qid
    iounit: int

@message(114, "fid:u32 name:s perm:u32 mode:u8 extension:s/u")
class Tcreate(Message):
    fid: int
    name: str
    perm: int
    mode: int
    extension: str = ""

@message(115, "qid:qid iounit:u32")
class Rcreate(Message):
    qid: Qid
    iounit: int

@message(116, "fid:u32 offset:u64 count:u32")
class Tread(Message):
    fid: int
    offset: int
    count: int

@message(117, "data:data")
class Rread(Message):
    data: bytes

@message(118, "fid:u32 offset:u64 data:data")
class Twrite(Message):
    fid: int
    offset: int
    data: bytes

@message(119, "count:u32")
class Rwrite(Message):
    count: int

@message(120, "fid:u32")
class Tclunk(Message):
    fid: int

@message(121)
class Rclunk(Message):
    pass

@message(122, "fid:u32")
class Tremove(Message):
    fid: int

@message(123)
class Rremove(Message):
    pass

@message(124, "fid:u32")
class Tstat(Message):
    fid: int

@message(125, "stat:stat")
class Rstat(Message):
    stat: Stat

@message(126, "fid:u32 stat:stat")
class Twstat(Message):
    fid: int
    stat: Stat

@message(127)
class Rwstat(Message):
    pass
# fmt: on


__all__ = [
    "Rattach",
    "Rauth",
    "Rclunk",
    "Rcreate",
    "Rerror",
    "Rflush",
    "Ropen",
    "Rread",
    "Rremove",
    "Rstat",
    "Rversion",
    "Rwalk",
    "Rwrite",
    "Rwstat",
    "Tattach",
    "Tauth",
    "Tclunk",
    "Tcreate",
    "Tflush",
    "Topen",
    "Tread",
    "Tremove",
    "Tstat",
    "Tversion",
    "Twalk",
    "Twrite",
    "Twstat",
]
