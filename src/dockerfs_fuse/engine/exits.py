"""Waiting for containers to stop: one `POST /wait` per container, shared by its readers.

The request runs on the Docker client's thread and answers with a
`concurrent.futures.Future`; this module is where that becomes trio: an
`ExitWait` whose `code()` is awaited like any other trio call.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

import trio

log = logging.getLogger(__name__)

# Containers whose `wait` may be read at once: each read waits on one
# `POST /wait` per container, holding one of aiohttp's connections.
MAX_EXIT_WAITS = 12


class TooManyWaits(Exception):
    """MAX_EXIT_WAITS containers are waited on already."""


class WaitCancelled(Exception):
    """The request ended without an exit code (its client closed)."""


class Waiter(Protocol):
    def wait(self, cid: str) -> concurrent.futures.Future[int]: ...


class ExitWait:
    """One `POST /wait` for a container, shared by every reader of its `wait`."""

    def __init__(self, future: concurrent.futures.Future[int], on_done: Callable[[], None]) -> None:
        self._future = future
        self._done = trio.Event()
        self.readers = 0
        token = trio.lowlevel.current_trio_token()

        def finished() -> None:
            self._done.set()
            on_done()

        def wake(_: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(finished)

        future.add_done_callback(wake)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def code(self) -> int:
        """The exit code, once the container is not running; DockerProblem if
        the request failed, WaitCancelled if it was given up."""
        await self._done.wait()
        try:
            return self._future.result()
        except concurrent.futures.CancelledError:
            raise WaitCancelled("the wait request was cancelled") from None

    def cancel(self) -> None:
        self._future.cancel()


class ExitWaits:
    """The exit waits in flight, by engine and container, at most `limit` of them."""

    def __init__(self, limit: int = MAX_EXIT_WAITS) -> None:
        self.limit = limit
        self._waits: dict[tuple[str, str], ExitWait] = {}

    def __len__(self) -> int:
        return len(self._waits)

    def join(self, engine: str, source: Waiter, cid: str) -> ExitWait:
        """The container's wait, started now unless another reader started it."""
        key = (engine, cid)
        shared = self._waits.get(key)
        if shared is None:
            if len(self._waits) >= self.limit:
                log.warning("wait %s: %d containers waited on already", cid[:12], self.limit)
                raise TooManyWaits(f"{self.limit} containers waited on already")

            def done() -> None:
                if self._waits.get(key) is shared:
                    del self._waits[key]

            shared = self._waits[key] = ExitWait(source.wait(cid), done)
        shared.readers += 1
        return shared

    def leave(self, engine: str, cid: str, shared: ExitWait) -> None:
        """One reader fewer; with none left, stop asking."""
        shared.readers -= 1
        if shared.readers <= 0 and not shared.done:
            shared.cancel()
            if self._waits.get((engine, cid)) is shared:
                del self._waits[engine, cid]
