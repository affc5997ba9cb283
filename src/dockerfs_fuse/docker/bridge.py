"""asyncio work awaited from trio: a loop in a thread of its own, and a stream.

aiodocker is asyncio; the filesystem runs on trio. Rather than mixing event
loops in one thread, the asyncio side runs on a loop in a daemon thread and
trio awaits its results through thread-safe futures (`await_future`) or reads
what a long-lived producer emits (`Stream`). Nothing here knows Docker, so
the bridge can be swapped (for trio-asyncio, say) without touching the
Docker client in source.py.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Generic, TypeVar

import trio

T = TypeVar("T")


class AsyncioThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self, name: str = "asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def finished(fut: concurrent.futures.Future[T]) -> None:
    """Wait in trio until a future of another thread is done, never cancelling it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    await done.wait()


async def await_future(fut: concurrent.futures.Future[T]) -> T:
    """Wait in trio for a future completed on another thread; cancel it if we are."""
    try:
        await finished(fut)
    except BaseException:
        fut.cancel()
        raise
    return fut.result()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], None]) -> None:
    """Run fn on the loop's thread, unless the loop is closed (we are exiting)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(fn)


class Stream(Generic[T]):
    """Items produced on the asyncio thread, read from trio. Unbounded: the
    producers here (log output, events) are paced by Docker, not by us.

    `put` and `finish` run in trio (the producer reaches them through
    `trio.lowlevel.TrioToken.run_sync_soon`); `future` is the producer's, so
    `close` can cancel it.
    """

    def __init__(self) -> None:
        self.future: concurrent.futures.Future[None] | None = None
        self._items: collections.deque[T] = collections.deque()
        self._ready = trio.Event()
        self._done = False
        self._error: Exception | None = None

    def put(self, item: T) -> None:
        self._items.append(item)
        self._ready.set()

    def finish(self, error: Exception | None) -> None:
        self._done = True
        self._error = error
        self._ready.set()

    async def get(self) -> T | None:
        """The next item; None at the end; raises the producer's error."""
        while not self._items and not self._done:
            self._ready = trio.Event()
            await self._ready.wait()
        if self._items:
            return self._items.popleft()
        if self._error is not None:
            raise self._error
        return None

    def close(self) -> None:
        if self.future is not None:
            self.future.cancel()

    async def __aiter__(self) -> AsyncIterator[T]:
        while (item := await self.get()) is not None:
            yield item
