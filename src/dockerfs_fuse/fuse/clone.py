"""An open `clone` file of the engine view: each write one request, each read
what the last one made (its name) or why it was refused, on the same
descriptor (`exec 3<>clone; echo run ... >&3; read id <&3`).

The descriptor's offset has moved past the write, and a 9P client reads
from 0: reads count from wherever the first one after the write starts
(engine/clone.py's Replies), then EOF until the next write. Direct I/O, so
nothing is cached and every write reaches us whole (at most MAX_LINE_BYTES;
a longer one is refused at its first piece).
"""

from __future__ import annotations

import pyfuse3
import trio

from dockerfs_fuse.engine.clone import Cloner, Replies
from dockerfs_fuse.fuse.errors import refusal_reason
from dockerfs_fuse.fuse.handles import Handle, HandleTable, file_info
from dockerfs_fuse.fuse.interrupts import interruptible, process_of
from dockerfs_fuse.fuse.invalidate import Invalidator


class CloneHandle(Handle):
    def __init__(self, cloner: Cloner, kind: str, pid: int, invalidator: Invalidator) -> None:
        self.cloner = cloner
        self.kind = kind
        self.pid = pid
        self.invalidator = invalidator
        self.replies = Replies()
        # One request at a time per open: the answer read is the last write's.
        self._lock = trio.Lock()

    async def write(self, off: int, buf: bytes) -> int:
        async with self._lock:
            try:
                if self.kind == "images":  # a pull takes as long as it takes: ^C ends it
                    await interruptible(self.pid, self.cloner.write, self.kind, buf, self.replies)
                else:
                    await self.cloner.write(self.kind, buf, self.replies)
            except BaseException as exc:
                reason = refusal_reason(exc) if isinstance(exc, Exception) else "interrupted"
                self.replies.end(reason)
                raise
        # `ls` right after the write shows what it made.
        await self.invalidator.told_kernel()
        return len(buf)

    async def read(self, off: int, size: int) -> bytes:
        return await interruptible(self.pid, self.replies.read, off, size)


def open_clone(
    handles: HandleTable, cloner: Cloner, kind: str, pid: int, invalidator: Invalidator
) -> pyfuse3.FileInfo:
    handle = CloneHandle(cloner, kind, process_of(pid), invalidator)
    return file_info(handles.add(handle), direct_io=True, keep_cache=False)
