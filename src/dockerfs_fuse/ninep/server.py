"""The 9P server: trio listeners, one task per connection (connection.py),
and what bounds the connections together: one thread pool, one descriptor
budget, one reply byte budget (resources.py)."""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable

import trio

from dockerfs_fuse.ninep.connection import Connection
from dockerfs_fuse.ninep.export import Export
from dockerfs_fuse.ninep.resources import Shared

log = logging.getLogger("dockerfs_fuse.ninep")

# accept(2) errors that say "not now" rather than "never".
_ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_ACCEPT_IGNORABLE_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
_ACCEPT_BACKOFF = (0.05, 1.0)  # first and longest pause while out of descriptors
_WARN_EVERY = 60.0  # seconds between two "cannot accept" warnings


async def _accept_loop(
    listener: trio.SocketListener,
    nursery: trio.Nursery,
    handle: Callable[[trio.SocketStream], Awaitable[None]],
) -> None:
    """Accept until cancelled.  Out of descriptors, wait (longer each time, up
    to a second) and say so at most once a minute, instead of spinning."""
    pause = _ACCEPT_BACKOFF[0]
    warned_at = -math.inf
    async with listener:
        while True:
            try:
                sock, _ = await listener.socket.accept()
            except OSError as exc:
                if exc.errno in _ACCEPT_IGNORABLE_ERRNOS:
                    continue
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                if trio.current_time() - warned_at >= _WARN_EVERY:
                    warned_at = trio.current_time()
                    log.warning(
                        "cannot accept connections (%s); retrying until descriptors free up",
                        os.strerror(exc.errno or 0),
                    )
                else:
                    log.debug("accept: %s again; next try in %.2fs", exc.strerror, pause)
                await trio.sleep(pause)
                pause = min(pause * 2, _ACCEPT_BACKOFF[1])
                continue
            pause = _ACCEPT_BACKOFF[0]
            nursery.start_soon(handle, trio.SocketStream(sock))


async def serve(
    export: Export,
    listeners: list[trio.SocketListener],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve every listener until cancelled; cancellation closes every connection."""
    counter = itertools.count(1)
    shared = Shared.for_server()

    async def handle(stream: trio.SocketStream) -> None:
        peer = f"conn{next(counter)}"
        with contextlib.suppress(OSError):
            peer += f"[{stream.socket.getpeername()}]"
        log.debug("%s: connected", peer)
        shared.fds.connections += 1
        try:
            await Connection(export, stream, peer, shared).run()
        except Exception:
            # One connection's bug must not end the others.
            log.exception("%s: connection failed", peer)
        finally:
            shared.fds.connections -= 1

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, nursery, handle)
        task_status.started()
