"""A container's shell for engine/channel.py's policy, in memory: each line
it is sent is answered as the test says (a status and what it said, or
nothing), on trio, so that a MockClock runs its deadlines."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable

import trio

from dockerfs_fuse.engine.channel import ShellStream

# What a line's acknowledgement is printed with (model/shell.py's framed and hello).
_NONCE = re.compile(rb"printf '\\n%s %d\\n' ([0-9a-f]+)")

# A command line's answer: its status and what it said, or None for none at all.
Answer = Callable[[bytes], "tuple[int, bytes] | None"]


def is_hello(line: bytes) -> bool:
    return line.startswith(b"printf ")


class FakeShell:
    """One started shell: answers its hello, then each command as `answer` says."""

    def __init__(self, answer: Answer, ends: bool = True, stalls: bool = False) -> None:
        self.answer = answer
        self.ends = ends  # whether end() can make sure it ended
        self.stalls = stalls  # a write never returns (a stalled connection)
        self.lines: list[bytes] = []
        self.closed = False
        self.killed = False
        self._send, self._receive = trio.open_memory_channel[list[tuple[int, bytes]]](1000)

    async def read(self) -> list[tuple[int, bytes]] | None:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            return None

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise trio.ClosedResourceError("closed")
        if self.stalls and not is_hello(data):
            await trio.sleep_forever()
        self.lines.append(data)
        found = _NONCE.search(data)
        reply = (0, b"") if is_hello(data) else self.answer(data)
        if reply is not None and found is not None:
            code, said = reply
            ack = said + b"\n" + found.group(1) + b" %d\n" % code
            self._send.send_nowait([(1, ack)])

    def counted(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        self.closed = True
        self._send.close()

    async def end(self) -> bool:
        self.killed = True
        self.close()
        return self.ends

    def commands(self) -> list[bytes]:
        return [line for line in self.lines if not is_hello(line)]


class FakeOpener:
    """Starts FakeShells (each as the attributes say when it starts); `hold`
    makes a start wait for it."""

    def __init__(self, answer: Answer = lambda line: (0, b"")) -> None:
        self.answer = answer
        self.ends = True
        self.stalls = False
        self.refuse: Exception | None = None
        self.hold: dict[str, trio.Event] = {}
        self.shells: list[FakeShell] = []

    async def open_shell(self, cid: str) -> ShellStream:
        if cid in self.hold:
            await self.hold[cid].wait()
        if self.refuse is not None:
            raise self.refuse
        shell = FakeShell(self.answer, self.ends, self.stalls)
        self.shells.append(shell)
        return shell
