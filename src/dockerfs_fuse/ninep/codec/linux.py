"""The messages 9P2000.L adds for Linux clients (v9fs): lopen, getattr,
readdir, statfs and the rest; the 9P2000 core (classic.py) stays in use."""

from __future__ import annotations

from dockerfs_fuse.ninep.codec.spec import Message, message
from dockerfs_fuse.ninep.codec.wire import Qid


# fmt: off
@message(7, "ecode:u32")
class Rlerror(Message):
    ecode: int

@message(8, "fid:u32")
class Tstatfs(Message):
    fid: int

@message(9, "type:u32 bsize:u32 blocks:u64 bfree:u64 bavail:u64 files:u64 ffree:u64 "
             "fsid:u64 namelen:u32")
class Rstatfs(Message):
    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid: int
    namelen: int

@message(12, "fid:u32 flags:u32")
class Tlopen(Message):
    fid: int
    flags: int

@message(13, "qid:qid iounit:u32")
class Rlopen(Message):
    qid: Qid
    iounit: int

@message(14, "fid:u32 name:s flags:u32 mode:u32 gid:u32")
class Tlcreate(Message):
    fid: int
    name: str
    flags: int
    mode: int
    gid: int

@message(15, "qid:qid iounit:u32")
class Rlcreate(Message):
    qid: Qid
    iounit: int

@message(16, "fid:u32 name:s symtgt:s gid:u32")
class Tsymlink(Message):
    fid: int
    name: str
    symtgt: str
    gid: int

@message(17, "qid:qid")
class Rsymlink(Message):
    qid: Qid

@message(18, "dfid:u32 name:s mode:u32 major:u32 minor:u32 gid:u32")
class Tmknod(Message):
    dfid: int
    name: str
    mode: int
    major: int
    minor: int
    gid: int

@message(19, "qid:qid")
class Rmknod(Message):
    qid: Qid

@message(20, "fid:u32 dfid:u32 name:s")
class Trename(Message):
    fid: int
    dfid: int
    name: str

@message(21)
class Rrename(Message):
    pass

@message(22, "fid:u32")
class Treadlink(Message):
    fid: int

@message(23, "target:s")
class Rreadlink(Message):
    target: str

@message(24, "fid:u32 request_mask:u64")
class Tgetattr(Message):
    fid: int
    request_mask: int

@message(25, "valid:u64 qid:qid mode:u32 uid:u32 gid:u32 nlink:u64 rdev:u64 size:u64 "
              "blksize:u64 blocks:u64 atime_sec:u64 atime_nsec:u64 mtime_sec:u64 "
              "mtime_nsec:u64 ctime_sec:u64 ctime_nsec:u64 btime_sec:u64 btime_nsec:u64 "
              "gen:u64 data_version:u64")
class Rgetattr(Message):
    valid: int
    qid: Qid
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int
    ctime_sec: int
    ctime_nsec: int
    btime_sec: int = 0
    btime_nsec: int = 0
    gen: int = 0
    data_version: int = 0

@message(26, "fid:u32 valid:u32 mode:u32 uid:u32 gid:u32 size:u64 atime_sec:u64 "
              "atime_nsec:u64 mtime_sec:u64 mtime_nsec:u64")
class Tsetattr(Message):
    fid: int
    valid: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_sec: int
    atime_nsec: int
    mtime_sec: int
    mtime_nsec: int

@message(27)
class Rsetattr(Message):
    pass

@message(30, "fid:u32 newfid:u32 name:s")
class Txattrwalk(Message):
    fid: int
    newfid: int
    name: str

@message(31, "size:u64")
class Rxattrwalk(Message):
    size: int

@message(32, "fid:u32 name:s attr_size:u64 flags:u32")
class Txattrcreate(Message):
    fid: int
    name: str
    attr_size: int
    flags: int

@message(33)
class Rxattrcreate(Message):
    pass

@message(40, "fid:u32 offset:u64 count:u32")
class Treaddir(Message):
    fid: int
    offset: int
    count: int

@message(41, "data:data")
class Rreaddir(Message):
    data: bytes

@message(50, "fid:u32 datasync:u32")
class Tfsync(Message):
    fid: int
    datasync: int

@message(51)
class Rfsync(Message):
    pass

@message(52, "fid:u32 type:u8 flags:u32 start:u64 length:u64 proc_id:u32 client_id:s")
class Tlock(Message):
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(53, "status:u8")
class Rlock(Message):
    status: int

@message(54, "fid:u32 type:u8 start:u64 length:u64 proc_id:u32 client_id:s")
class Tgetlock(Message):
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(55, "type:u8 start:u64 length:u64 proc_id:u32 client_id:s")
class Rgetlock(Message):
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@message(70, "dfid:u32 fid:u32 name:s")
class Tlink(Message):
    dfid: int
    fid: int
    name: str

@message(71)
class Rlink(Message):
    pass

@message(72, "dfid:u32 name:s mode:u32 gid:u32")
class Tmkdir(Message):
    dfid: int
    name: str
    mode: int
    gid: int

@message(73, "qid:qid")
class Rmkdir(Message):
    qid: Qid

@message(74, "olddirfid:u32 oldname:s newdirfid:u32 newname:s")
class Trenameat(Message):
    olddirfid: int
    oldname: str
    newdirfid: int
    newname: str

@message(75)
class Rrenameat(Message):
    pass

@message(76, "dirfid:u32 name:s flags:u32")
class Tunlinkat(Message):
    dirfid: int
    name: str
    flags: int

@message(77)
class Runlinkat(Message):
    pass
# fmt: on
# fmt: on


__all__ = [
    "Rfsync",
    "Rgetattr",
    "Rgetlock",
    "Rlcreate",
    "Rlerror",
    "Rlink",
    "Rlock",
    "Rlopen",
    "Rmkdir",
    "Rmknod",
    "Rreaddir",
    "Rreadlink",
    "Rrename",
    "Rrenameat",
    "Rsetattr",
    "Rstatfs",
    "Rsymlink",
    "Runlinkat",
    "Rxattrcreate",
    "Rxattrwalk",
    "Tfsync",
    "Tgetattr",
    "Tgetlock",
    "Tlcreate",
    "Tlink",
    "Tlock",
    "Tlopen",
    "Tmkdir",
    "Tmknod",
    "Treaddir",
    "Treadlink",
    "Trename",
    "Trenameat",
    "Tsetattr",
    "Tstatfs",
    "Tsymlink",
    "Tunlinkat",
    "Txattrcreate",
    "Txattrwalk",
]
