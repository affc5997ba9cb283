"""9P2000, 9P2000.u and 9P2000.L messages and their wire form.

Pure: bytes in, dataclasses out, and back. No sockets, no files, no clock, so
that every message can be round-tripped in a unit test and a fuzzer can throw
anything at `decode` without touching the disk.

Each message class carries a field spec (`_SPEC`).  A field whose spec ends in
`/u`, `/L` or `/uL` exists on the wire only in those dialects; elsewhere it
keeps its default.  That one table drives both `encode` and `decode`, so the
two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, dataclass_transform

NOTAG = 0xFFFF
NOFID = 0xFFFFFFFF
NONUNAME = 0xFFFFFFFF
HEADER_SIZE = 7  # size[4] type[1] tag[2]
MAXWELEM = 16
IOHDRSZ = 24  # what a Twrite/Rread header may take; iounit = msize - IOHDRSZ

# Qid types (the high byte of a 9P2000 mode).
QTDIR = 0x80
QTAPPEND = 0x40
QTEXCL = 0x20
QTMOUNT = 0x10
QTAUTH = 0x08
QTTMP = 0x04
QTSYMLINK = 0x02
QTLINK = 0x01
QTFILE = 0x00

# 9P2000 / 9P2000.u mode bits.
DMDIR = 0x80000000
DMAPPEND = 0x40000000
DMEXCL = 0x20000000
DMMOUNT = 0x10000000
DMAUTH = 0x08000000
DMTMP = 0x04000000
DMSYMLINK = 0x02000000
DMLINK = 0x01000000
DMDEVICE = 0x00800000
DMNAMEDPIPE = 0x00200000
DMSOCKET = 0x00100000
DMSETUID = 0x00080000
DMSETGID = 0x00040000

# Topen modes.
OREAD = 0
OWRITE = 1
ORDWR = 2
OEXEC = 3
OTRUNC = 0x10
ORCLOSE = 0x40

# 9P2000.L getattr request/valid bits.
GETATTR_MODE = 0x001
GETATTR_NLINK = 0x002
GETATTR_UID = 0x004
GETATTR_GID = 0x008
GETATTR_RDEV = 0x010
GETATTR_ATIME = 0x020
GETATTR_MTIME = 0x040
GETATTR_CTIME = 0x080
GETATTR_INO = 0x100
GETATTR_SIZE = 0x200
GETATTR_BLOCKS = 0x400
GETATTR_BASIC = 0x7FF
GETATTR_ALL = 0x3FFF

# 9P2000.L setattr valid bits.
SETATTR_MODE = 0x001
SETATTR_UID = 0x002
SETATTR_GID = 0x004
SETATTR_SIZE = 0x008
SETATTR_ATIME = 0x010
SETATTR_MTIME = 0x020
SETATTR_CTIME = 0x040
SETATTR_ATIME_SET = 0x080
SETATTR_MTIME_SET = 0x100


class Dialect(enum.Enum):
    """The protocol variant a connection negotiated in Tversion."""

    P2000 = "9P2000"
    U = "9P2000.u"
    L = "9P2000.L"


class DecodeError(ValueError):
    """A frame that cannot be a valid message.  `tag` is set when it was readable,
    so the server can answer with an error instead of dropping the connection."""

    def __init__(self, reason: str, tag: int | None = None) -> None:
        super().__init__(reason)
        self.tag = tag


class FrameError(ValueError):
    """The byte stream itself is broken (a size field that cannot be right);
    there is no way to find the next frame, so the connection must close."""


@dataclass(frozen=True)
class Qid:
    """The server's unique identity for a file: type, version, path."""

    type: int
    version: int
    path: int


ZERO_QID = Qid(0, 0, 0)


@dataclass
class Stat:
    """stat(5) record; the last four fields exist only in 9P2000.u."""

    type: int = 0
    dev: int = 0
    qid: Qid = ZERO_QID
    mode: int = 0
    atime: int = 0
    mtime: int = 0
    length: int = 0
    name: str = ""
    uid: str = ""
    gid: str = ""
    muid: str = ""
    extension: str = ""
    n_uid: int = NONUNAME
    n_gid: int = NONUNAME
    n_muid: int = NONUNAME


@dataclass(frozen=True)
class Dirent:
    """One 9P2000.L Rreaddir entry; `offset` is the cookie for the next Treaddir."""

    qid: Qid
    offset: int
    type: int
    name: str


# ---------------------------------------------------------------- primitives


class _Reader:
    """A cursor over a frame that raises DecodeError instead of IndexError."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None, tag: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end
        self.tag = tag

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise DecodeError("truncated message", self.tag)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def u8(self) -> int:
        return self.unpack("<B")

    def u16(self) -> int:
        return self.unpack("<H")

    def u32(self) -> int:
        return self.unpack("<I")

    def u64(self) -> int:
        return self.unpack("<Q")

    def string(self) -> str:
        # surrogateescape: Linux names are bytes, and must survive the round trip.
        return self.take(self.u16()).decode("utf-8", "surrogateescape")

    def qid(self) -> Qid:
        kind, version, path = struct.unpack("<BIQ", self.take(13))
        return Qid(kind, version, path)


def _pack_string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("<H", len(raw)) + raw


def _pack_qid(qid: Qid) -> bytes:
    return struct.pack("<BIQ", qid.type, qid.version, qid.path)


def encode_stat(stat: Stat, dialect: Dialect) -> bytes:
    """The stat record as it appears in Rstat, Twstat and directory reads."""
    body = struct.pack("<HI", stat.type, stat.dev) + _pack_qid(stat.qid)
    body += struct.pack("<IIIQ", stat.mode, stat.atime, stat.mtime, stat.length)
    body += b"".join(_pack_string(s) for s in (stat.name, stat.uid, stat.gid, stat.muid))
    if dialect is Dialect.U:
        body += _pack_string(stat.extension)
        body += struct.pack("<III", stat.n_uid, stat.n_gid, stat.n_muid)
    return struct.pack("<H", len(body)) + body


def _read_stat(reader: _Reader, dialect: Dialect) -> Stat:
    size = reader.u16()
    inner = _Reader(reader.data, reader.pos, reader.pos + size, reader.tag)
    if inner.end > reader.end:
        raise DecodeError("truncated stat", reader.tag)
    stat = Stat(
        type=inner.u16(),
        dev=inner.u32(),
        qid=inner.qid(),
        mode=inner.u32(),
        atime=inner.u32(),
        mtime=inner.u32(),
        length=inner.u64(),
        name=inner.string(),
        uid=inner.string(),
        gid=inner.string(),
        muid=inner.string(),
    )
    if dialect is Dialect.U:
        stat.extension = inner.string()
        stat.n_uid, stat.n_gid, stat.n_muid = inner.u32(), inner.u32(), inner.u32()
    if inner.pos != inner.end:
        raise DecodeError("stat size does not match its fields", reader.tag)
    reader.pos = inner.end
    return stat


def decode_stats(data: bytes, dialect: Dialect) -> list[Stat]:
    """The stat records of a 9P2000/.u directory read."""
    reader = _Reader(data)
    stats = []
    while reader.pos < reader.end:
        stats.append(_read_stat(reader, dialect))
    return stats


def encode_dirent(dirent: Dirent) -> bytes:
    """One 9P2000.L directory entry: qid[13] offset[8] type[1] name[s]."""
    return (
        _pack_qid(dirent.qid)
        + struct.pack("<QB", dirent.offset, dirent.type)
        + _pack_string(dirent.name)
    )


def decode_dirents(data: bytes) -> list[Dirent]:
    """The entries of an Rreaddir payload."""
    reader = _Reader(data)
    entries = []
    while reader.pos < reader.end:
        qid = reader.qid()
        offset = reader.u64()
        kind = reader.u8()
        entries.append(Dirent(qid, offset, kind, reader.string()))
    return entries


# ------------------------------------------------------------------ messages

_Packer = Callable[[Any, Dialect], bytes]
_Unpacker = Callable[[_Reader, Dialect], Any]

_KINDS: dict[str, tuple[_Packer, _Unpacker]] = {
    "u8": (lambda v, d: struct.pack("<B", v), lambda r, d: r.u8()),
    "u16": (lambda v, d: struct.pack("<H", v), lambda r, d: r.u16()),
    "u32": (lambda v, d: struct.pack("<I", v), lambda r, d: r.u32()),
    "u64": (lambda v, d: struct.pack("<Q", v), lambda r, d: r.u64()),
    "s": (lambda v, d: _pack_string(v), lambda r, d: r.string()),
    "qid": (lambda v, d: _pack_qid(v), lambda r, d: r.qid()),
    "strs": (
        lambda v, d: struct.pack("<H", len(v)) + b"".join(_pack_string(s) for s in v),
        lambda r, d: tuple(r.string() for _ in range(r.u16())),
    ),
    "qids": (
        lambda v, d: struct.pack("<H", len(v)) + b"".join(_pack_qid(q) for q in v),
        lambda r, d: tuple(r.qid() for _ in range(r.u16())),
    ),
    "data": (
        lambda v, d: struct.pack("<I", len(v)) + bytes(v),
        lambda r, d: r.take(r.u32()),
    ),
    # Rstat/Twstat wrap the stat record (which has its own size) in n[2].
    "stat": (
        lambda v, d: (lambda s: struct.pack("<H", len(s)) + s)(encode_stat(v, d)),
        lambda r, d: _read_wrapped_stat(r, d),
    ),
}

_DIALECT_LETTERS = {"u": Dialect.U, "L": Dialect.L}


def _read_wrapped_stat(reader: _Reader, dialect: Dialect) -> Stat:
    end = reader.pos + 2 + reader.u16()
    stat = _read_stat(reader, dialect)
    if reader.pos != end:
        raise DecodeError("stat length does not match", reader.tag)
    return stat


@dataclass(frozen=True)
class _Field:
    name: str
    kind: str
    dialects: frozenset[Dialect] | None  # None: every dialect


def _parse_spec(spec: str) -> tuple[_Field, ...]:
    fields = []
    for word in spec.split():
        name, _, kind = word.partition(":")
        kind, _, only = kind.partition("/")
        if kind not in _KINDS:
            raise ValueError(f"unknown field kind {kind!r}")
        dialects = frozenset(_DIALECT_LETTERS[c] for c in only) if only else None
        fields.append(_Field(name, kind, dialects))
    return tuple(fields)


@dataclass
class Message:
    """Base of every 9P message; `tag` pairs a reply with its request."""

    tag: int
    TYPE: ClassVar[int] = -1
    _SPEC: ClassVar[tuple[_Field, ...]] = ()


MESSAGE_TYPES: dict[int, type[Message]] = {}


_M = TypeVar("_M", bound=Message)


@dataclass_transform()
def _message(type_code: int, spec: str = "") -> Callable[[type[_M]], type[_M]]:
    """Make a message class a dataclass and register it with its wire layout."""

    def register(cls: type[_M]) -> type[_M]:
        cls = dataclass(cls)
        cls.TYPE = type_code
        cls._SPEC = _parse_spec(spec)
        names = [f.name for f in dataclasses.fields(cls)][1:]
        if names != [f.name for f in cls._SPEC]:
            raise TypeError(f"{cls.__name__}: fields {names} do not match spec")
        MESSAGE_TYPES[type_code] = cls
        return cls

    return register


# fmt: off
# -- 9P2000 (and the .u/.L additions to its messages) --
@_message(100, "msize:u32 version:s")
class Tversion(Message):
    msize: int
    version: str

@_message(101, "msize:u32 version:s")
class Rversion(Message):
    msize: int
    version: str

@_message(102, "afid:u32 uname:s aname:s n_uname:u32/uL")
class Tauth(Message):
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME

@_message(103, "aqid:qid")
class Rauth(Message):
    aqid: Qid

@_message(104, "fid:u32 afid:u32 uname:s aname:s n_uname:u32/uL")
class Tattach(Message):
    fid: int
    afid: int
    uname: str
    aname: str
    n_uname: int = NONUNAME

@_message(105, "qid:qid")
class Rattach(Message):
    qid: Qid

@_message(107, "ename:s errno:u32/u")
class Rerror(Message):
    ename: str
    errno: int = 0

@_message(108, "oldtag:u16")
class Tflush(Message):
    oldtag: int

@_message(109)
class Rflush(Message):
    pass

@_message(110, "fid:u32 newfid:u32 wnames:strs")
class Twalk(Message):
    fid: int
    newfid: int
    wnames: tuple[str, ...]

@_message(111, "qids:qids")
class Rwalk(Message):
    qids: tuple[Qid, ...]

@_message(112, "fid:u32 mode:u8")
class Topen(Message):
    fid: int
    mode: int

@_message(113, "qid:qid iounit:u32")
class Ropen(Message):
    qid: Qid
    iounit: int

@_message(114, "fid:u32 name:s perm:u32 mode:u8 extension:s/u")
class Tcreate(Message):
    fid: int
    name: str
    perm: int
    mode: int
    extension: str = ""

@_message(115, "qid:qid iounit:u32")
class Rcreate(Message):
    qid: Qid
    iounit: int

@_message(116, "fid:u32 offset:u64 count:u32")
class Tread(Message):
    fid: int
    offset: int
    count: int

@_message(117, "data:data")
class Rread(Message):
    data: bytes

@_message(118, "fid:u32 offset:u64 data:data")
class Twrite(Message):
    fid: int
    offset: int
    data: bytes

@_message(119, "count:u32")
class Rwrite(Message):
    count: int

@_message(120, "fid:u32")
class Tclunk(Message):
    fid: int

@_message(121)
class Rclunk(Message):
    pass

@_message(122, "fid:u32")
class Tremove(Message):
    fid: int

@_message(123)
class Rremove(Message):
    pass

@_message(124, "fid:u32")
class Tstat(Message):
    fid: int

@_message(125, "stat:stat")
class Rstat(Message):
    stat: Stat

@_message(126, "fid:u32 stat:stat")
class Twstat(Message):
    fid: int
    stat: Stat

@_message(127)
class Rwstat(Message):
    pass

# -- 9P2000.L --
@_message(7, "ecode:u32")
class Rlerror(Message):
    ecode: int

@_message(8, "fid:u32")
class Tstatfs(Message):
    fid: int

@_message(9, "type:u32 bsize:u32 blocks:u64 bfree:u64 bavail:u64 files:u64 ffree:u64 "
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

@_message(12, "fid:u32 flags:u32")
class Tlopen(Message):
    fid: int
    flags: int

@_message(13, "qid:qid iounit:u32")
class Rlopen(Message):
    qid: Qid
    iounit: int

@_message(14, "fid:u32 name:s flags:u32 mode:u32 gid:u32")
class Tlcreate(Message):
    fid: int
    name: str
    flags: int
    mode: int
    gid: int

@_message(15, "qid:qid iounit:u32")
class Rlcreate(Message):
    qid: Qid
    iounit: int

@_message(16, "fid:u32 name:s symtgt:s gid:u32")
class Tsymlink(Message):
    fid: int
    name: str
    symtgt: str
    gid: int

@_message(17, "qid:qid")
class Rsymlink(Message):
    qid: Qid

@_message(18, "dfid:u32 name:s mode:u32 major:u32 minor:u32 gid:u32")
class Tmknod(Message):
    dfid: int
    name: str
    mode: int
    major: int
    minor: int
    gid: int

@_message(19, "qid:qid")
class Rmknod(Message):
    qid: Qid

@_message(20, "fid:u32 dfid:u32 name:s")
class Trename(Message):
    fid: int
    dfid: int
    name: str

@_message(21)
class Rrename(Message):
    pass

@_message(22, "fid:u32")
class Treadlink(Message):
    fid: int

@_message(23, "target:s")
class Rreadlink(Message):
    target: str

@_message(24, "fid:u32 request_mask:u64")
class Tgetattr(Message):
    fid: int
    request_mask: int

@_message(25, "valid:u64 qid:qid mode:u32 uid:u32 gid:u32 nlink:u64 rdev:u64 size:u64 "
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

@_message(26, "fid:u32 valid:u32 mode:u32 uid:u32 gid:u32 size:u64 atime_sec:u64 "
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

@_message(27)
class Rsetattr(Message):
    pass

@_message(30, "fid:u32 newfid:u32 name:s")
class Txattrwalk(Message):
    fid: int
    newfid: int
    name: str

@_message(31, "size:u64")
class Rxattrwalk(Message):
    size: int

@_message(32, "fid:u32 name:s attr_size:u64 flags:u32")
class Txattrcreate(Message):
    fid: int
    name: str
    attr_size: int
    flags: int

@_message(33)
class Rxattrcreate(Message):
    pass

@_message(40, "fid:u32 offset:u64 count:u32")
class Treaddir(Message):
    fid: int
    offset: int
    count: int

@_message(41, "data:data")
class Rreaddir(Message):
    data: bytes

@_message(50, "fid:u32 datasync:u32")
class Tfsync(Message):
    fid: int
    datasync: int

@_message(51)
class Rfsync(Message):
    pass

@_message(52, "fid:u32 type:u8 flags:u32 start:u64 length:u64 proc_id:u32 client_id:s")
class Tlock(Message):
    fid: int
    type: int
    flags: int
    start: int
    length: int
    proc_id: int
    client_id: str

@_message(53, "status:u8")
class Rlock(Message):
    status: int

@_message(54, "fid:u32 type:u8 start:u64 length:u64 proc_id:u32 client_id:s")
class Tgetlock(Message):
    fid: int
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@_message(55, "type:u8 start:u64 length:u64 proc_id:u32 client_id:s")
class Rgetlock(Message):
    type: int
    start: int
    length: int
    proc_id: int
    client_id: str

@_message(70, "dfid:u32 fid:u32 name:s")
class Tlink(Message):
    dfid: int
    fid: int
    name: str

@_message(71)
class Rlink(Message):
    pass

@_message(72, "dfid:u32 name:s mode:u32 gid:u32")
class Tmkdir(Message):
    dfid: int
    name: str
    mode: int
    gid: int

@_message(73, "qid:qid")
class Rmkdir(Message):
    qid: Qid

@_message(74, "olddirfid:u32 oldname:s newdirfid:u32 newname:s")
class Trenameat(Message):
    olddirfid: int
    oldname: str
    newdirfid: int
    newname: str

@_message(75)
class Rrenameat(Message):
    pass

@_message(76, "dirfid:u32 name:s flags:u32")
class Tunlinkat(Message):
    dirfid: int
    name: str
    flags: int

@_message(77)
class Runlinkat(Message):
    pass
# fmt: on

# Which T-messages each dialect speaks.  9P2000.L drops open/create/stat/wstat
# (Linux never sends them) but keeps the rest of the 9P2000 core.
_CORE = {Tversion, Tauth, Tattach, Tflush, Twalk, Tread, Twrite, Tclunk, Tremove}
_CLASSIC = {Topen, Tcreate, Tstat, Twstat}
_LINUX = {
    Tstatfs, Tlopen, Tlcreate, Tsymlink, Tmknod, Trename, Treadlink, Tgetattr, Tsetattr,
    Txattrwalk, Txattrcreate, Treaddir, Tfsync, Tlock, Tgetlock, Tlink, Tmkdir, Trenameat,
    Tunlinkat,
}  # fmt: skip
REQUESTS: dict[Dialect, frozenset[type[Message]]] = {
    Dialect.P2000: frozenset(_CORE | _CLASSIC),
    Dialect.U: frozenset(_CORE | _CLASSIC),
    Dialect.L: frozenset(_CORE | _LINUX),
}


def is_request(cls: type[Message]) -> bool:
    """T-messages have even type codes; their replies are the next odd one."""
    return cls.TYPE % 2 == 0


def _wire_fields(cls: type[Message], dialect: Dialect) -> list[_Field]:
    return [f for f in cls._SPEC if f.dialects is None or dialect in f.dialects]


def encode(msg: Message, dialect: Dialect) -> bytes:
    """The complete frame, size prefix included."""
    parts = [
        _KINDS[f.kind][0](getattr(msg, f.name), dialect) for f in _wire_fields(type(msg), dialect)
    ]
    size = HEADER_SIZE + sum(len(part) for part in parts)
    return b"".join([struct.pack("<IBH", size, msg.TYPE, msg.tag), *parts])


def peek_tag(frame: bytes) -> int | None:
    """The tag of a frame, if it is long enough to have one."""
    if len(frame) < HEADER_SIZE:
        return None
    tag: int = struct.unpack_from("<H", frame, 5)[0]
    return tag


def decode(frame: bytes, dialect: Dialect) -> Message:
    """One whole frame (as FrameSplitter yields it) back into a message."""
    if len(frame) < HEADER_SIZE:
        raise DecodeError("frame shorter than its header")
    size, type_code, tag = struct.unpack_from("<IBH", frame)
    if size != len(frame):
        raise DecodeError("frame size does not match its length", tag)
    cls = MESSAGE_TYPES.get(type_code)
    if cls is None:
        raise DecodeError(f"unknown message type {type_code}", tag)
    reader = _Reader(frame, HEADER_SIZE, tag=tag)
    values = {f.name: _KINDS[f.kind][1](reader, dialect) for f in _wire_fields(cls, dialect)}
    if reader.pos != reader.end:
        raise DecodeError("trailing bytes after message", tag)
    return cls(tag=tag, **values)


class FrameSplitter:
    """Cuts a byte stream into frames.  `max_size` is the negotiated msize and
    may change after Tversion; a size field outside [7, max_size] means the
    stream is unreadable from here on."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._start = 0  # frames before this offset were already returned

    def feed(self, data: bytes | bytearray) -> None:
        if self._start:  # drop what was consumed once per feed, not per frame
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive."""
        if self.pending() < 4:
            return None
        (size,) = struct.unpack_from("<I", self._buffer, self._start)
        if size < HEADER_SIZE:
            raise FrameError(f"frame size {size} is shorter than a header")
        if size > self.max_size:
            raise FrameError(f"frame size {size} exceeds msize {self.max_size}")
        if self.pending() < size:
            return None
        frame = bytes(self._buffer[self._start : self._start + size])
        self._start += size
        return frame

    def pending(self) -> int:
        """Bytes received but not yet returned as a frame."""
        return len(self._buffer) - self._start


def field_names(cls: type[Message]) -> list[str]:
    """The wire fields of a message class in order (for tests and debugging)."""
    return [f.name for f in cls._SPEC]


__all__ = [
    "MESSAGE_TYPES",
    "REQUESTS",
    "DecodeError",
    "Dialect",
    "Dirent",
    "FrameError",
    "FrameSplitter",
    "Message",
    "Qid",
    "Stat",
    "decode",
    "decode_dirents",
    "decode_stats",
    "encode",
    "encode_dirent",
    "encode_stat",
    "field_names",
]
