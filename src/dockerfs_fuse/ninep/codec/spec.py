"""Message classes from field specs, and the one encoder and decoder they share.

A message class is a dataclass whose wire layout is one spec string:
`@message(100, "msize:u32 version:s")`.  A field whose kind ends in `/u`,
`/L` or `/uL` exists on the wire only in those dialects; elsewhere it keeps
its default.  That one table drives both `encode` and `decode`, so the two
cannot drift apart.  Pure: no sockets, no files, no clock, so every message
round-trips in a unit test and a fuzzer can throw anything at `decode`.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, dataclass_transform

from dockerfs_fuse.ninep.codec.constants import HEADER_SIZE
from dockerfs_fuse.ninep.codec.wire import (
    DecodeError,
    Dialect,
    Reader,
    Stat,
    encode_stat,
    pack_qid,
    pack_string,
    read_stat,
)

_Packer = Callable[[Any, Dialect], bytes]
_Unpacker = Callable[[Reader, Dialect], Any]

_KINDS: dict[str, tuple[_Packer, _Unpacker]] = {
    "u8": (lambda v, d: struct.pack("<B", v), lambda r, d: r.u8()),
    "u16": (lambda v, d: struct.pack("<H", v), lambda r, d: r.u16()),
    "u32": (lambda v, d: struct.pack("<I", v), lambda r, d: r.u32()),
    "u64": (lambda v, d: struct.pack("<Q", v), lambda r, d: r.u64()),
    "s": (lambda v, d: pack_string(v), lambda r, d: r.string()),
    "qid": (lambda v, d: pack_qid(v), lambda r, d: r.qid()),
    "strs": (
        lambda v, d: struct.pack("<H", len(v)) + b"".join(pack_string(s) for s in v),
        lambda r, d: tuple(r.string() for _ in range(r.u16())),
    ),
    "qids": (
        lambda v, d: struct.pack("<H", len(v)) + b"".join(pack_qid(q) for q in v),
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


def _read_wrapped_stat(reader: Reader, dialect: Dialect) -> Stat:
    end = reader.pos + 2 + reader.u16()
    stat = read_stat(reader, dialect)
    if reader.pos != end:
        raise DecodeError("stat length does not match", reader.tag)
    return stat


@dataclass(frozen=True)
class Field:
    """One field of a message: its name, its kind, and the dialects that carry it."""

    name: str
    kind: str
    dialects: frozenset[Dialect] | None  # None: every dialect


def _parse_spec(spec: str) -> tuple[Field, ...]:
    fields = []
    for word in spec.split():
        name, _, kind = word.partition(":")
        kind, _, only = kind.partition("/")
        if kind not in _KINDS:
            raise ValueError(f"unknown field kind {kind!r}")
        dialects = frozenset(_DIALECT_LETTERS[c] for c in only) if only else None
        fields.append(Field(name, kind, dialects))
    return tuple(fields)


@dataclass
class Message:
    """Base of every 9P message; `tag` pairs a reply with its request."""

    tag: int
    TYPE: ClassVar[int] = -1
    _SPEC: ClassVar[tuple[Field, ...]] = ()


MESSAGE_TYPES: dict[int, type[Message]] = {}


_M = TypeVar("_M", bound=Message)


@dataclass_transform()
def message(type_code: int, spec: str = "") -> Callable[[type[_M]], type[_M]]:
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


def wire_fields(cls: type[Message], dialect: Dialect) -> list[Field]:
    """The fields of a message class that `dialect` puts on the wire, in order."""
    return [f for f in cls._SPEC if f.dialects is None or dialect in f.dialects]


def encode(msg: Message, dialect: Dialect) -> bytes:
    """The complete frame, size prefix included."""
    parts = [
        _KINDS[f.kind][0](getattr(msg, f.name), dialect) for f in wire_fields(type(msg), dialect)
    ]
    size = HEADER_SIZE + sum(len(part) for part in parts)
    return b"".join([struct.pack("<IBH", size, msg.TYPE, msg.tag), *parts])


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
    reader = Reader(frame, HEADER_SIZE, tag=tag)
    values = {f.name: _KINDS[f.kind][1](reader, dialect) for f in wire_fields(cls, dialect)}
    if reader.pos != reader.end:
        raise DecodeError("trailing bytes after message", tag)
    return cls(tag=tag, **values)


__all__ = ["MESSAGE_TYPES", "Field", "Message", "decode", "encode", "wire_fields"]
