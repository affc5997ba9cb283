"""The 9P codec alone: every message of every dialect round-trips, a few frames
match bytes written out by hand from the specs, and bad input raises the
codec's own errors (never IndexError or struct.error)."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import struct
from typing import Any

import pytest

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Dirent, Qid, Stat

QID = Qid(codec.QTDIR, 7, 0x1122334455667788)
STAT = Stat(
    type=1,
    dev=2,
    qid=QID,
    mode=codec.DMDIR | 0o755,
    atime=3,
    mtime=4,
    length=5,
    name="näme",
    uid="u",
    gid="g",
    muid="m",
    extension="ext",
    n_uid=10,
    n_gid=11,
    n_muid=12,
)
SAMPLES: dict[str, Any] = {
    "u8": 0xAB,
    "u16": 0xBEEF,
    "u32": 0xDEADBEEF,
    "u64": 0x0123456789ABCDEF,
    "s": "héllo/wörld",
    "qid": QID,
    "qids": (QID, Qid(0, 1, 2)),
    "strs": ("a", "bb", "ccc"),
    "data": b"\x00\x01binary\xff",
    "stat": STAT,
}
PLAIN_STAT_FIELDS: dict[str, Any] = {
    "extension": "",
    "n_uid": codec.NONUNAME,
    "n_gid": codec.NONUNAME,
    "n_muid": codec.NONUNAME,
}


def sample(cls: type[codec.Message], dialect: Dialect) -> codec.Message:
    """An instance with a distinctive value in every field the dialect carries;
    fields it does not carry keep their defaults so the round trip is exact."""
    values: dict[str, Any] = {}
    for f in codec.wire_fields(cls, dialect):
        value = SAMPLES[f.kind]
        if f.kind == "stat" and dialect is not Dialect.U:
            value = dataclasses.replace(value, **PLAIN_STAT_FIELDS)
        values[f.name] = value
    return cls(tag=0x1234, **values)


CASES = [
    pytest.param(cls, dialect, id=f"{cls.__name__}-{dialect.value}")
    for cls in codec.MESSAGE_TYPES.values()
    for dialect in Dialect
]


@pytest.mark.parametrize(("cls", "dialect"), CASES)
def test_round_trip(cls: type[codec.Message], dialect: Dialect) -> None:
    msg = sample(cls, dialect)
    frame = codec.encode(msg, dialect)
    assert struct.unpack_from("<I", frame)[0] == len(frame)
    assert codec.decode(frame, dialect) == msg


@pytest.mark.parametrize(("cls", "dialect"), CASES)
def test_every_truncation_is_a_decode_error(cls: type[codec.Message], dialect: Dialect) -> None:
    frame = codec.encode(sample(cls, dialect), dialect)
    for cut in range(len(frame)):
        short = struct.pack("<I", cut) + frame[4:cut] if cut >= 4 else frame[:cut]
        with pytest.raises(codec.DecodeError):
            codec.decode(short, dialect)


def test_every_dialect_has_all_its_messages() -> None:
    names = {cls.__name__ for cls in codec.MESSAGE_TYPES.values()}
    classic = "version auth attach flush walk open create read write clunk remove stat wstat"
    for base in classic.split():
        assert {f"T{base}", f"R{base}"} <= names
    assert "Rerror" in names
    linux_only = (
        "statfs lopen lcreate symlink mknod rename readlink getattr setattr xattrwalk "
        "xattrcreate readdir fsync lock getlock link mkdir renameat unlinkat"
    )
    for linux in linux_only.split():
        assert {f"T{linux}", f"R{linux}"} <= names
    assert "Rlerror" in names
    assert codec.Tgetattr in codec.REQUESTS[Dialect.L]
    assert codec.Tgetattr not in codec.REQUESTS[Dialect.P2000]
    assert codec.Topen not in codec.REQUESTS[Dialect.L]


def test_tversion_bytes_match_the_spec() -> None:
    frame = codec.encode(codec.Tversion(tag=codec.NOTAG, msize=8192, version="9P2000.L"), Dialect.L)
    assert frame == bytes.fromhex("1500000064ffff002000000800") + b"9P2000.L"


def test_twalk_bytes_match_the_spec() -> None:
    msg = codec.Twalk(tag=1, fid=2, newfid=3, wnames=("ab", "c"))
    frame = codec.encode(msg, Dialect.P2000)
    body = struct.pack("<IIH", 2, 3, 2) + b"\x02\x00ab\x01\x00c"
    assert frame == struct.pack("<IBH", 7 + len(body), 110, 1) + body


def hand_written(*fields: str) -> bytes:
    """Hex fields, little-endian as the spec lays them out, spaces for reading."""
    return bytes.fromhex("".join(fields))


def test_tread_bytes_match_the_spec() -> None:
    # size[4] Tread[1] tag[2] fid[4] offset[8] count[4]
    msg = codec.Tread(tag=1, fid=2, offset=0x0102030405060708, count=8192)
    wire = hand_written("17000000", "74", "0100", "02000000", "0807060504030201", "00200000")
    for dialect in Dialect:
        assert codec.encode(msg, dialect) == wire
        assert codec.decode(wire, dialect) == msg


def test_rread_bytes_match_the_spec() -> None:
    # size[4] Rread[1] tag[2] count[4] data[count]
    msg = codec.Rread(tag=0x0102, data=b"hi\n")
    wire = hand_written("0e000000", "75", "0201", "03000000", "68690a")
    assert codec.encode(msg, Dialect.L) == wire
    assert codec.decode(wire, Dialect.U) == msg


def test_rlopen_bytes_match_the_spec() -> None:
    # size[4] Rlopen[1] tag[2] qid[13] iounit[4]; qid = type[1] version[4] path[8]
    msg = codec.Rlopen(tag=7, qid=Qid(codec.QTDIR, 1, 2), iounit=8168)
    wire = hand_written("18000000", "0d", "0700", "80", "01000000", "0200000000000000", "e81f0000")
    assert codec.encode(msg, Dialect.L) == wire
    assert codec.decode(wire, Dialect.L) == msg


def test_rgetattr_bytes_match_the_spec() -> None:
    """size[4] Rgetattr[1] tag[2] valid[8] qid[13] mode[4] uid[4] gid[4]
    nlink[8] rdev[8] size[8] blksize[8] blocks[8] atime_sec[8] atime_nsec[8]
    mtime_sec[8] mtime_nsec[8] ctime_sec[8] ctime_nsec[8] btime_sec[8]
    btime_nsec[8] gen[8] data_version[8]; uid and gid differ, so a swap shows."""
    msg = codec.Rgetattr(
        tag=3,
        valid=codec.GETATTR_BASIC,
        qid=Qid(0, 0x11, 0x22),
        mode=0o100644,
        uid=1234,
        gid=5678,
        nlink=1,
        rdev=0,
        size=6,
        blksize=4096,
        blocks=8,
        atime_sec=10,
        atime_nsec=11,
        mtime_sec=12,
        mtime_nsec=13,
        ctime_sec=14,
        ctime_nsec=15,
    )
    wire = hand_written(
        "a0000000",  # 160 bytes
        "19",
        "0300",
        "ff07000000000000",  # valid
        "00", "11000000", "2200000000000000",  # qid
        "a4810000",  # mode 0o100644
        "d2040000",  # uid 1234
        "2e160000",  # gid 5678
        "0100000000000000",  # nlink
        "0000000000000000",  # rdev
        "0600000000000000",  # size
        "0010000000000000",  # blksize
        "0800000000000000",  # blocks
        "0a00000000000000", "0b00000000000000",  # atime
        "0c00000000000000", "0d00000000000000",  # mtime
        "0e00000000000000", "0f00000000000000",  # ctime
        "0000000000000000", "0000000000000000",  # btime
        "0000000000000000", "0000000000000000",  # gen, data_version
    )  # fmt: skip
    assert codec.encode(msg, Dialect.L) == wire
    assert codec.decode(wire, Dialect.L) == msg


def test_dialect_specific_fields() -> None:
    attach = codec.Tattach(tag=1, fid=0, afid=codec.NOFID, uname="u", aname="", n_uname=5)
    assert len(codec.encode(attach, Dialect.U)) == len(codec.encode(attach, Dialect.P2000)) + 4
    error = codec.Rerror(tag=1, ename="x", errno=2)
    assert codec.decode(codec.encode(error, Dialect.P2000), Dialect.P2000).errno == 0  # type: ignore[attr-defined]
    assert codec.decode(codec.encode(error, Dialect.U), Dialect.U) == error


def test_fixed_sizes_match_the_linux_header() -> None:
    """Sizes the kernel's net/9p/protocol.c formats imply."""
    getattr_reply = sample(codec.Rgetattr, Dialect.L)
    assert len(codec.encode(getattr_reply, Dialect.L)) == 7 + 8 + 13 + 3 * 4 + 15 * 8
    statfs_reply = sample(codec.Rstatfs, Dialect.L)
    assert len(codec.encode(statfs_reply, Dialect.L)) == 7 + 4 + 4 + 6 * 8 + 4


def test_stat_records_and_dirents_round_trip() -> None:
    for dialect in (Dialect.P2000, Dialect.U):
        stat = STAT
        if dialect is not Dialect.U:
            stat = dataclasses.replace(STAT, **PLAIN_STAT_FIELDS)
        blob = codec.encode_stat(stat, dialect) * 3
        assert codec.decode_stats(blob, dialect) == [stat] * 3
    plain = codec.encode_stat(Stat(name="x"), Dialect.P2000)
    assert (
        struct.unpack_from("<H", plain)[0] == len(plain) - 2 == 2 + 4 + 13 + 4 * 3 + 8 + 4 * 2 + 1
    )
    entries = [Dirent(QID, 1, 4, "."), Dirent(Qid(0, 0, 9), 2, 8, "file")]
    assert codec.decode_dirents(b"".join(codec.encode_dirent(e) for e in entries)) == entries


def test_non_utf8_names_survive() -> None:
    name = b"caf\xe9".decode("utf-8", "surrogateescape")
    msg = codec.Twalk(tag=1, fid=0, newfid=1, wnames=(name,))
    frame = codec.encode(msg, Dialect.L)
    assert b"caf\xe9" in frame
    assert codec.decode(frame, Dialect.L) == msg


@pytest.mark.parametrize(
    ("frame", "has_tag"),
    [
        (b"", False),
        (b"\x07\x00\x00", False),
        (struct.pack("<IBH", 7, 200, 5), True),  # unknown type
        (struct.pack("<IBH", 7, 100, 5), True),  # Tversion without fields
        (struct.pack("<IBH", 9, 121, 5) + b"xx", True),  # trailing bytes
        (struct.pack("<IBH", 20, 120, 5) + b"\0" * 4, True),  # size lies
        (struct.pack("<IBHH", 9, 100 + 0, 5, 0) + b"", True),
        (struct.pack("<IBHIH", 13, 100, 5, 8192, 50), True),  # string runs past the end
    ],
)
def test_malformed_frames(frame: bytes, has_tag: bool) -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode(frame, Dialect.P2000)
    assert (info.value.tag is not None) == has_tag


def test_stat_whose_inner_size_lies() -> None:
    record = bytearray(codec.encode_stat(Stat(name="x"), Dialect.P2000))
    record[0] += 1
    body = struct.pack("<IH", 1, len(record)) + bytes(record)
    with pytest.raises(codec.DecodeError):
        codec.decode(struct.pack("<IBH", 7 + len(body), 126, 1) + body, Dialect.P2000)


def test_frame_splitter_streams_and_rejects_bad_sizes() -> None:
    frames = [
        codec.encode(sample(cls, Dialect.L), Dialect.L) for cls in codec.MESSAGE_TYPES.values()
    ]
    stream = b"".join(frames)
    splitter = codec.FrameSplitter(1 << 20)
    out = []
    rng = random.Random(1)
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 40)
        splitter.feed(stream[pos : pos + step])
        pos += step
        while (frame := splitter.next_frame()) is not None:
            out.append(frame)
    assert out == frames and splitter.pending() == 0
    for size in (0, 6, 1 << 21):
        bad = codec.FrameSplitter(1 << 20)
        bad.feed(struct.pack("<I", size) + b"\0" * 8)
        with pytest.raises(codec.FrameError):
            bad.next_frame()


def test_random_bytes_only_raise_decode_error() -> None:
    rng = random.Random(9)
    frames = [
        codec.encode(sample(cls, Dialect.U), Dialect.U) for cls in codec.MESSAGE_TYPES.values()
    ]
    for _ in range(20000):
        frame = bytearray(rng.choice(frames))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(4, len(frame))] = rng.randrange(256)
        for dialect in Dialect:
            with contextlib.suppress(codec.DecodeError):
                codec.decode(bytes(frame), dialect)
