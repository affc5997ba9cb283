"""Docker's stream framing (stdcopy), removed from a log stream as it arrives."""

from __future__ import annotations

# The largest frame taken for a frame. Docker's stdcopy writes each log
# message as one frame, with no limit of its own; the engine's copier cuts
# messages at 16 KiB, or at the log driver's buffer size (awslogs: 256 KiB).
# A longer declared length is a header guessed wrong, in a raw stream that
# happens to look framed, and would buffer up to 4 GiB.
MAX_FRAME = 1 << 20


class Demuxer:
    """Docker's log stream framing, removed.

    A non-TTY container's log stream is a sequence of frames, each an 8-byte
    header (stream type, three zero bytes, big-endian length) and a payload.
    A TTY container's stream is raw. Older engines do not say which in the
    Content-Type, so the first header is recognised by its shape. A header
    declaring more than MAX_FRAME is no header: the stream is raw from there.
    """

    def __init__(self, content_type: str = "") -> None:
        self._buf = bytearray()
        self._raw: bool | None = None
        if "raw-stream" in content_type:
            self._raw = True
        elif "multiplexed-stream" in content_type:
            self._raw = False

    def feed(self, data: bytes) -> bytes:
        if self._raw:
            return bytes(data)
        self._buf += data
        if self._raw is None:
            if len(self._buf) < 8:
                return b""
            head = self._buf[:8]
            framed = head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0"
            self._raw = not (framed and int.from_bytes(head[4:8], "big") <= MAX_FRAME)
            if self._raw:
                whole = bytes(self._buf)
                self._buf.clear()
                return whole
        out = bytearray()
        while len(self._buf) >= 8:
            length = int.from_bytes(self._buf[4:8], "big")
            if length > MAX_FRAME:
                self._raw = True
                out += self._buf
                self._buf.clear()
                break
            if len(self._buf) < 8 + length:
                break
            out += self._buf[8 : 8 + length]
            del self._buf[: 8 + length]
        return bytes(out)

    def flush(self) -> bytes:
        """Whatever is left at the end: a short raw stream, or a truncated frame."""
        rest = bytes(self._buf)
        self._buf.clear()
        if self._raw is None or self._raw:
            return rest
        return rest[8:] if len(rest) > 8 else b""
