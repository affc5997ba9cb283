"""The 9P wire primitives: the dialects, the records every message builds on
(qid, stat, Linux dirent), a bounds-checked reader, and the splitter that
cuts a byte stream into frames.  Pure: bytes in, values out, and back."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from dockerfs_fuse.ninep.codec.constants import HEADER_SIZE, NONUNAME


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


class Reader:
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


def pack_string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 0xFFFF:
        raise ValueError("string longer than 65535 bytes")
    return struct.pack("<H", len(raw)) + raw


def pack_qid(qid: Qid) -> bytes:
    return struct.pack("<BIQ", qid.type, qid.version, qid.path)


def encode_stat(stat: Stat, dialect: Dialect) -> bytes:
    """The stat record as it appears in Rstat, Twstat and directory reads."""
    body = struct.pack("<HI", stat.type, stat.dev) + pack_qid(stat.qid)
    body += struct.pack("<IIIQ", stat.mode, stat.atime, stat.mtime, stat.length)
    body += b"".join(pack_string(s) for s in (stat.name, stat.uid, stat.gid, stat.muid))
    if dialect is Dialect.U:
        body += pack_string(stat.extension)
        body += struct.pack("<III", stat.n_uid, stat.n_gid, stat.n_muid)
    return struct.pack("<H", len(body)) + body


def read_stat(reader: Reader, dialect: Dialect) -> Stat:
    size = reader.u16()
    inner = Reader(reader.data, reader.pos, reader.pos + size, reader.tag)
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
    reader = Reader(data)
    stats = []
    while reader.pos < reader.end:
        stats.append(read_stat(reader, dialect))
    return stats


def encode_dirent(dirent: Dirent) -> bytes:
    """One 9P2000.L directory entry: qid[13] offset[8] type[1] name[s]."""
    return (
        pack_qid(dirent.qid)
        + struct.pack("<QB", dirent.offset, dirent.type)
        + pack_string(dirent.name)
    )


def decode_dirents(data: bytes) -> list[Dirent]:
    """The entries of an Rreaddir payload."""
    reader = Reader(data)
    entries = []
    while reader.pos < reader.end:
        qid = reader.qid()
        offset = reader.u64()
        kind = reader.u8()
        entries.append(Dirent(qid, offset, kind, reader.string()))
    return entries


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


__all__ = [
    "ZERO_QID",
    "DecodeError",
    "Dialect",
    "Dirent",
    "FrameError",
    "FrameSplitter",
    "Qid",
    "Stat",
    "decode_dirents",
    "decode_stats",
    "encode_dirent",
    "encode_stat",
]
