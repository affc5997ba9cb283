"""Signals the kernel's INTERRUPT would have told us of, read from /proc.

pyfuse3 cannot see the kernel's INTERRUPT, and a reader killed by a signal
waits until we answer: a request that may block for long (a followed log, a
container's `wait`, a slow read under root/) looks at its process itself.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dockerfs_fuse.fuse.errors import fail

R = TypeVar("R")

# How often a blocked read checks whether its reader was signalled.
SIGNAL_POLL = 0.2

# Signals whose default action does not end the process: a reader that gets
# one of these (Ctrl-Z, a window resize) keeps waiting.
_NOT_FATAL = frozenset(
    {
        signal.SIGCHLD,
        signal.SIGCONT,
        signal.SIGURG,
        signal.SIGWINCH,
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    }
)
_NOT_FATAL_MASK = sum(1 << (s - 1) for s in _NOT_FATAL)


def signal_pending(pid: int) -> bool:
    """Whether the process has a signal pending that will end it: pending,
    not blocked, not caught, not ignored, and fatal by default. A process
    that is gone (the descriptor was inherited) reads as no signal.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        pending = int(fields["SigPnd"], 16) | int(fields["ShdPnd"], 16)
        blocked = int(fields["SigBlk"], 16)
        handled = int(fields["SigCgt"], 16) | int(fields["SigIgn"], 16)
    except (OSError, KeyError, ValueError):
        return False
    kill = 1 << (signal.SIGKILL - 1)
    return bool(pending & kill or pending & ~blocked & ~handled & ~_NOT_FATAL_MASK)


def process_of(pid: int) -> int:
    """The process (thread group) a request's thread belongs to."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pid


async def interruptible(pid: int, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    """Await fn(*args), or answer EINTR once `pid` has a fatal signal pending:
    a shell's Ctrl-C on a slow read must not wait for the engine."""
    scope = trio.CancelScope()
    failure: Exception | None = None
    result: list[R] = []

    async def watch() -> None:
        while True:
            await trio.sleep(SIGNAL_POLL)
            if signal_pending(pid):
                scope.cancel()
                return

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        try:
            with scope:
                result.append(await fn(*args))
        except Exception as exc:
            failure = exc
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    if not result:
        raise fail(errno.EINTR)
    return result[0]


async def interruptible_restartable(pid: int, fn: Callable[..., Awaitable[R]], *args: Any) -> R:
    """`interruptible`, cheaper for a call that may be cancelled and called
    again losing nothing (a read of a stream that keeps what it took): it
    first runs alone for SIGNAL_POLL, which most such calls do not outlast,
    and only then beside a watch for signals."""
    with trio.move_on_after(SIGNAL_POLL):
        return await fn(*args)
    if signal_pending(pid):
        raise fail(errno.EINTR)
    return await interruptible(pid, fn, *args)
