"""Concurrent root listings share one container-list request, and a missed
name asks the engine at most once per interval (pure, no engine); an event stream is
followed through drops."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import DockerUnavailable
from dockerfs_fuse.engine.refresh import MissLimiter, Refresher, follow_events
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


def test_a_miss_asks_once_per_interval_until_found() -> None:
    now = [0.0]
    misses = MissLimiter[str](interval=1.0, kept=2, clock=lambda: now[0])
    assert misses.may_ask("web")
    assert not misses.may_ask("web")  # a probe loop is no request loop
    assert misses.may_ask("db")  # other names ask for themselves
    now[0] += 1.0
    assert misses.may_ask("web")
    misses.found("web")
    assert misses.may_ask("web")  # found, then missed again: gone since, ask at once


def test_missed_names_beyond_the_bound_are_forgotten_at_once() -> None:
    misses = MissLimiter[str](interval=1.0, kept=2, clock=lambda: 0.0)
    for name in ("a", "b", "c"):
        assert misses.may_ask(name)
    assert misses.may_ask("d")  # past the bound: all forgotten, "d" kept
    assert misses.may_ask("a")
    assert not misses.may_ask("d")


class FlakyEvents:
    """An engine whose event stream is refused `down` times, then gives one event and ends."""

    def __init__(self, down: int) -> None:
        self.name = "local"
        self.down = down
        self.resyncs: list[float] = []
        self.events: list[str] = []
        self.up: list[bool] = []

    def open_events(self) -> FlakyEvents:
        return self

    async def __aiter__(self) -> AsyncIterator[str]:
        yield "start"

    def close(self) -> None:
        pass

    async def resync(self) -> None:
        self.resyncs.append(trio.current_time())
        if self.down:
            self.down -= 1
            raise DockerUnavailable("cannot reach Docker: no such socket")

    def on_event(self, event: str) -> None:
        self.events.append(event)

    def set_events_up(self, up: bool) -> None:
        self.up.append(up)


def test_a_dropped_stream_is_logged_once_and_retried_with_a_capped_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FlakyEvents(down=4)

    async def main() -> None:
        with trio.move_on_after(4.6):
            await follow_events(engine, "event stream", backoff_max=1.0)

    caplog.set_level(logging.INFO)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    # Refused at 0, 0.5, 1.5, 2.5 (0.5 doubling, capped at 1), up at 3.5; it
    # ends, and the next connect (0.5 later: up resets the backoff) is at 4.0.
    assert engine.resyncs == [0.0, 0.5, 1.5, 2.5, 3.5, 4.0, 4.5]
    assert engine.events == ["start"] * 3
    # Four refusals in a row are one drop, told once; each end is a drop of its own.
    assert [r.getMessage() for r in caplog.records][:3] == [
        "local: event stream cannot reach Docker: no such socket; retrying",
        "local: event stream reconnected",
        "local: event stream ended; retrying",
    ]
    assert engine.up[:3] == [False, False, False]
