"""The asyncio-to-trio bridge on its own: no Docker, just the two event loops."""

from __future__ import annotations

import asyncio
import math

import pytest
import trio

from dockerfs_fuse.docker.bridge import AsyncioThread, Stream, await_future


def test_a_coroutine_on_the_asyncio_thread_is_awaited_from_trio() -> None:
    thread = AsyncioThread()

    async def on_asyncio() -> str:
        await asyncio.sleep(0.01)
        return "answer"

    async def main() -> str:
        return await await_future(thread.submit(on_asyncio()))

    try:
        assert trio.run(main) == "answer"
    finally:
        thread.stop()


def test_cancelling_the_trio_side_cancels_the_asyncio_side() -> None:
    thread = AsyncioThread()
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(math.inf)
        except asyncio.CancelledError:
            thread.loop.call_soon(cancelled.set)
            raise

    async def main() -> None:
        with trio.move_on_after(0.1):
            await await_future(thread.submit(forever()))

    try:
        trio.run(main)
        done = asyncio.run_coroutine_threadsafe(asyncio.wait_for(cancelled.wait(), 10), thread.loop)
        assert done.result(15) is True
    finally:
        thread.stop()


def test_a_stream_carries_items_then_the_end_or_the_error() -> None:
    thread = AsyncioThread()

    async def main() -> None:
        token = trio.lowlevel.current_trio_token()

        def feed(error: Exception | None) -> Stream[int]:
            out: Stream[int] = Stream()

            async def produce() -> None:
                for i in range(3):
                    token.run_sync_soon(out.put, i)
                    await asyncio.sleep(0)
                token.run_sync_soon(out.finish, error)

            out.future = thread.submit(produce())
            return out

        assert [item async for item in feed(None)] == [0, 1, 2]
        failing = feed(ValueError("dropped"))
        assert [await failing.get() for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="dropped"):
            await failing.get()

    try:
        trio.run(main)
    finally:
        thread.stop()
