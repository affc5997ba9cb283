"""Concurrent root listings share one container-list request (pure, no engine)."""

from __future__ import annotations

import trio
import trio.testing

from dockerfs_fuse.engine.refresh import Refresher
from dockerfs_fuse.model.containers import Container


def test_callers_during_a_request_share_it_and_later_ones_make_their_own() -> None:
    calls = 0
    release = trio.Event()

    async def fetch() -> list[Container]:
        nonlocal calls
        calls += 1
        n = calls
        await release.wait()
        return [{"Id": f"{n:064x}"}]

    refresher = Refresher(fetch)
    results: list[list[Container]] = []

    async def caller() -> None:
        results.append(await refresher.get())

    async def main() -> None:
        nonlocal release
        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert calls == 1 and len(results) == 8
        assert all(r is results[0] for r in results)
        # A caller arriving after the answer gets a fresh request, and a caller
        # arriving while that one is in flight shares it.
        release = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(caller)
            await trio.testing.wait_all_tasks_blocked()
            release.set()
        assert calls == 2 and results[-1] is results[-2] and results[-1] is not results[0]

    trio.run(main)


def test_a_failed_request_fails_every_waiter_once() -> None:
    calls = 0

    async def fetch() -> list[Container]:
        nonlocal calls
        calls += 1
        await trio.sleep(0.01)
        raise OSError("engine down")

    refresher = Refresher(fetch)
    errors: list[BaseException] = []

    async def caller() -> None:
        try:
            await refresher.get()
        except OSError as exc:
            errors.append(exc)

    async def main() -> None:
        async with trio.open_nursery() as n:
            for _ in range(4):
                n.start_soon(caller)

    trio.run(main)
    assert calls == 1 and len(errors) == 4
