"""A tar stream read as it arrives: member headers out, bodies passed through.

The engine answers `GET /containers/{id}/archive` with a tar that can be as
large as the container's filesystem, and only its headers say what is there.
Python's tarfile wants a file to read from; this parser is pushed bytes
instead, as they come off the socket, and never holds a body: each body's
bytes are handed to the sink (or skipped) and forgotten. Pure, no I/O.

It reads what Go's archive/tar writes (Docker, Podman): ustar headers with
PAX extended headers (long and non-ASCII names, big sizes), base-256
numbers, and GNU long names and link names for good measure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

BLOCK = 512

REGULAR = b"0"
HARDLINK = b"1"
SYMLINK = b"2"
CHAR = b"3"
BLOCKDEV = b"4"
DIRECTORY = b"5"
FIFO = b"6"
CONTIGUOUS = b"7"
_PAX = b"x"
_PAX_GLOBAL = b"g"
_GNU_LONGNAME = b"L"
_GNU_LONGLINK = b"K"
_NO_BODY = frozenset([HARDLINK, SYMLINK, CHAR, BLOCKDEV, DIRECTORY, FIFO])
# Metadata blocks whose body we read ourselves; cap them (a PAX header is a few
# hundred bytes; a path is at most a few KB).
_META_MAX = 1 << 20


class TarError(Exception):
    """The stream is not a tar archive, or it ended in the middle of one."""


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member, from its header (and any PAX or GNU header before it)."""

    name: bytes
    type: bytes  # one of the type flags above ("0" for regular)
    mode: int  # permission bits as written (setuid, setgid, sticky included)
    uid: int
    gid: int
    size: int  # bytes of body that follow in the stream
    mtime: int  # seconds
    linkname: bytes
    devmajor: int
    devminor: int


class Sink(Protocol):
    def member(self, m: Member) -> bool:
        """A header; return False to stop reading the stream here."""
        ...

    def body(self, data: memoryview) -> None:
        """The next bytes of the current member's body."""
        ...


def _number(field: bytes) -> int:
    """An octal field, or GNU base-256 when its first byte has the high bit."""
    if field and field[0] & 0x80:
        # Go's rule: bit 6 of the first byte is the sign; negative values are
        # the inverted bits of the magnitude less one.
        invert = 0xFF if field[0] & 0x40 else 0
        value = 0
        for i, byte in enumerate(field):
            byte ^= invert
            if i == 0:
                byte &= 0x7F
            value = (value << 8) | byte
        return ~value if invert else value
    text = field.split(b"\0", 1)[0].strip(b" \0")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"bad number {text!r} in a tar header") from None


def _string(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _checksum_ok(header: bytes) -> bool:
    stored = header[148:156]
    try:
        expected = _number(stored)
    except TarError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    # Some old writers summed signed bytes.
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    return expected in (unsigned, signed)


def parse_pax(data: bytes) -> dict[str, bytes]:
    """PAX records: "<length> <key>=<value>\\n", values kept as bytes."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            break
        space = data.find(b" ", pos)
        if space < 0:
            raise TarError("bad PAX record")
        try:
            length = int(data[pos:space])
        except ValueError:
            raise TarError("bad PAX record length") from None
        record = data[space + 1 : pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            raise TarError("bad PAX record")
        key, sep, value = record[:-1].partition(b"=")
        if not sep:
            raise TarError("bad PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return records


class TarReader:
    """Push bytes in with feed(); headers and bodies come out through the sink.

    `done` is set at the archive's end (two zero blocks, or EOF at a header
    boundary) or when the sink asked to stop; `finish()` then checks the
    stream did not end in the middle of a member.
    """

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._buf = bytearray()
        # Bytes of the current body still to hand to the sink, then padding to skip.
        self._body_left = 0
        self._pad_left = 0
        # A metadata body (PAX, GNU long name) being collected, and its kind.
        self._meta: bytearray | None = None
        self._meta_type = b""
        self._meta_left = 0
        self._pax: dict[str, bytes] = {}
        self._pax_global: dict[str, bytes] = {}
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
        self._zero_blocks = 0
        self.done = False
        self.members = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and not self.done:
            if self._body_left:
                n = min(self._body_left, len(view))
                self._sink.body(view[:n])
                self._body_left -= n
                view = view[n:]
                continue
            if self._meta is not None:
                n = min(self._meta_left, len(view))
                self._meta += view[:n]
                self._meta_left -= n
                view = view[n:]
                if self._meta_left == 0:
                    self._end_meta()
                continue
            if self._pad_left:
                n = min(self._pad_left, len(view))
                self._pad_left -= n
                view = view[n:]
                continue
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == BLOCK:
                header = bytes(self._buf)
                self._buf.clear()
                self._header(header)

    def finish(self) -> None:
        """The stream ended: fine at the end of a member, an error inside one."""
        if self.done:
            return
        if self._body_left or self._meta is not None or self._buf or self._pad_left:
            raise TarError("the archive ended in the middle of a member")
        if self._pax or self._longname is not None or self._longlink is not None:
            raise TarError("the archive ended after an extended header")
        self.done = True

    # -- internals -----------------------------------------------------------

    def _header(self, header: bytes) -> None:
        if header == bytes(BLOCK):
            self._zero_blocks += 1
            if self._zero_blocks >= 2:
                self.done = True
            return
        if self._zero_blocks:
            raise TarError("data after an end-of-archive block")
        if not _checksum_ok(header):
            raise TarError("bad tar header checksum")
        typeflag = header[156:157]
        if typeflag == b"\0":
            typeflag = REGULAR
        size = _number(header[124:136])
        if size < 0:
            raise TarError("negative size in a tar header")
        if typeflag in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            if size > _META_MAX:
                raise TarError("oversized extended tar header")
            self._meta = bytearray()
            self._meta_type = typeflag
            self._meta_left = size
            self._pad_left = -size % BLOCK
            if size == 0:
                self._end_meta()
            return
        self._member(header, typeflag, size)

    def _end_meta(self) -> None:
        data = bytes(self._meta or b"")
        self._meta = None
        if self._meta_type == _PAX:
            self._pax.update(parse_pax(data))
        elif self._meta_type == _PAX_GLOBAL:
            self._pax_global.update(parse_pax(data))
        elif self._meta_type == _GNU_LONGNAME:
            self._longname = data.rstrip(b"\0")
        else:
            self._longlink = data.rstrip(b"\0")

    def _member(self, header: bytes, typeflag: bytes, size: int) -> None:
        pax = {**self._pax_global, **self._pax}
        name = _string(header[0:100])
        if header[257:263] == b"ustar\x00":  # POSIX: a prefix field (GNU has none)
            prefix = _string(header[345:500])
            if prefix:
                name = prefix + b"/" + name
        if self._longname is not None:
            name = self._longname
        if "path" in pax:
            name = pax["path"]
        linkname = _string(header[157:257])
        if self._longlink is not None:
            linkname = self._longlink
        if "linkpath" in pax:
            linkname = pax["linkpath"]
        if "size" in pax:
            size = _pax_int(pax["size"])
        member = Member(
            name=name,
            type=typeflag,
            mode=_number(header[100:108]) & 0o7777,
            uid=_pax_int(pax["uid"]) if "uid" in pax else _number(header[108:116]),
            gid=_pax_int(pax["gid"]) if "gid" in pax else _number(header[116:124]),
            size=size,
            mtime=_pax_seconds(pax["mtime"]) if "mtime" in pax else _number(header[136:148]),
            linkname=linkname,
            devmajor=_number(header[329:337]),
            devminor=_number(header[337:345]),
        )
        self._pax = {}
        self._longname = self._longlink = None
        self.members += 1
        # These carry no body whatever their size field says; anything else
        # (regular files, types we do not know) has `size` bytes to pass.
        body = 0 if typeflag in _NO_BODY else size
        self._body_left = body
        self._pad_left = -body % BLOCK
        if not self._sink.member(member):
            self.done = True


def _pax_int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise TarError(f"bad PAX number {value!r}") from None


def _pax_seconds(value: bytes) -> int:
    """PAX times may have a fraction ("1700000000.123"); whole seconds, as tar shows."""
    whole = value.split(b".", 1)[0]
    try:
        return int(whole) if whole not in (b"", b"-") else 0
    except ValueError:
        raise TarError(f"bad PAX time {value!r}") from None
