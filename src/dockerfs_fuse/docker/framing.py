"""Docker's stream framing (stdcopy), removed from a log stream as it arrives."""

from __future__ import annotations

# The largest frame taken for a frame. Docker's stdcopy writes each log
# message as one frame, with no limit of its own; the engine's copier cuts
# messages at 16 KiB, or at the log driver's buffer size (awslogs: 256 KiB).
# A longer declared length is a header guessed wrong, in a raw stream that
# happens to look framed, and would buffer up to 4 GiB.
MAX_FRAME = 1 << 20


# One piece of a demultiplexed stream: (1 stdout | 2 stderr, its bytes).
Run = tuple[int, bytes]
_HEADER = 8


class FrameSplitter:
    """Docker's stdcopy framing removed from a stream as it arrives.

    A framed stream is a sequence of frames, each an 8-byte header (stream
    type, three zero bytes, big-endian length) and a payload. `feed` returns
    what its bytes complete as runs, one per run of frames of one stream, so
    a fast command's 32 KiB frames cost one join per arrival, not a copy
    each. A frame begun and not ended is kept; the rest of an arrival is
    read in place, never copied into the buffer first.

    A header declaring more than MAX_FRAME is no header: `broken` is then set,
    feeding stops there, and `rest()` gives the bytes from that header on.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self.broken = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Run]:
        if self.broken:
            self._buf += data
            return []
        view = memoryview(data)
        runs: list[tuple[int, list[bytes | memoryview]]] = []
        if self._buf:
            view = self._complete(view, runs)
        pos, end = 0, len(view)
        while end - pos >= _HEADER:
            length = int.from_bytes(view[pos + 4 : pos + 8], "big")
            if length > MAX_FRAME:
                self.broken = True
                break
            if end - pos < _HEADER + length:
                break
            _append(runs, view[pos], view[pos + _HEADER : pos + _HEADER + length])
            pos += _HEADER + length
        if pos < end:
            self._buf += view[pos:]
        return [
            (kind, parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts))
            for kind, parts in runs
        ]

    def _complete(
        self, view: memoryview, runs: list[tuple[int, list[bytes | memoryview]]]
    ) -> memoryview:
        """Add to the frame begun in an earlier arrival; what is left of `view`."""
        buf = self._buf
        if len(buf) < _HEADER:
            take = min(_HEADER - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) < _HEADER:
                return view
        length = int.from_bytes(buf[4:8], "big")
        if length > MAX_FRAME:
            self.broken = True
            buf += view
            return view[:0]
        take = min(_HEADER + length - len(buf), len(view))
        buf += view[:take]
        if len(buf) == _HEADER + length:
            _append(runs, buf[0], bytes(buf[_HEADER:]))
            buf.clear()
        return view[take:]

    def rest(self) -> bytes:
        """What is buffered and not yet a whole frame (and clears it)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def _append(
    runs: list[tuple[int, list[bytes | memoryview]]], kind: int, data: bytes | memoryview
) -> None:
    if runs and runs[-1][0] == kind:
        runs[-1][1].append(data)
    else:
        runs.append((kind, [data]))


class Demuxer:
    """Docker's log stream framing, removed (stdout and stderr in one).

    A non-TTY container's log stream is framed (FrameSplitter); a TTY
    container's stream is raw. Older engines do not say which in the
    Content-Type, so the first header is recognised by its shape. A header
    declaring more than MAX_FRAME is no header: the stream is raw from there.
    """

    def __init__(self, content_type: str = "") -> None:
        self._frames = FrameSplitter()
        self._head = bytearray()  # the start, while it is not known whether it is framed
        self._raw: bool | None = None
        if "raw-stream" in content_type:
            self._raw = True
        elif "multiplexed-stream" in content_type:
            self._raw = False

    def feed(self, data: bytes) -> bytes:
        if self._raw:
            return bytes(data)
        if self._raw is None:
            self._head += data
            if len(self._head) < _HEADER:
                return b""
            head = self._head[:_HEADER]
            framed = head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0"
            self._raw = not (framed and int.from_bytes(head[4:8], "big") <= MAX_FRAME)
            data, self._head = bytes(self._head), bytearray()
            if self._raw:
                return data
        out = b"".join(piece for _, piece in self._frames.feed(data))
        if self._frames.broken:
            self._raw = True
            out += self._frames.rest()
        return out

    def flush(self) -> bytes:
        """Whatever is left at the end: a short raw stream, or a truncated frame."""
        if self._raw is None:
            rest, self._head = bytes(self._head), bytearray()
            return rest
        rest = self._frames.rest()
        return rest[_HEADER:] if len(rest) > _HEADER else b""
