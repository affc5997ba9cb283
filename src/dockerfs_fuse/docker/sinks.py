"""What a streaming request writes into: the producer's end of a spool.

A streaming request (a log, an archive) runs on the Docker client's asyncio
thread and hands its bytes to a sink as they arrive; the sink (engine/'s
spools implement these) owns what they become. Whatever happens, the request
ends with one `finish` and then `close`.
"""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def finish(self, error: Exception | None) -> None:
        """The request ended: normally (error None) or with the reason."""

    def close(self) -> None:
        """Nothing more will be written (called on the asyncio thread)."""


class LogSink(Sink, Protocol):
    def write(self, data: bytes) -> None:
        """Bytes of the log, frame headers removed."""


class ArchiveSink(Sink, Protocol):
    def write(self, data: bytes) -> bool:
        """Bytes of the tar as they arrive; False once no more are wanted."""
