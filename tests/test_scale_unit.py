"""Cost per container, not per engine: an event or a lookup costs the same
at 100 containers as at 10,000 (the fake engine of test_cache.py).

Counted, not timed, so that a loaded machine cannot make it flake: the
calls made in the daemon's own code (Python and C functions called from it,
profiled) and the memory it allocates at its peak (tracemalloc). A walk over
every container shows in the first; a copy of a listing, made in one C call,
in the second.
"""

from __future__ import annotations

import hashlib
import sys
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import trio
import trio.testing
from test_cache import FakeEngine, listed

import dockerfs_fuse
from dockerfs_fuse.engine.containers import EVENT_REREAD_DELAYS, EngineCache
from dockerfs_fuse.model.containers import Container
from dockerfs_fuse.model.inodes import InodeTable

_OURS = str(Path(dockerfs_fuse.__file__).parent)
SMALL, LARGE = 100, 10_000
# Whole cycles measured: each one container's create, start, rename, stop and
# removal, and lookups of its name, a prefix, its ID and misses.
CYCLES = 20


def cid(n: int) -> str:
    """An ID as Docker makes them, random-looking (test_cache's share their first digits)."""
    return hashlib.sha256(str(n).encode()).hexdigest()


def entry(n: int, state: str = "running", name: str = "") -> Container:
    return {"Id": cid(n), "Names": [f"/{name or f'c{n}'}"], "State": state, "Created": n}


@dataclass
class Cost:
    calls: int = 0
    peak_bytes: int = 0


@contextmanager
def counted(cost: Cost) -> Iterator[None]:
    """Count calls made from the package's own frames, and the peak of what it allocates."""

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event in ("call", "c_call") and frame.f_code.co_filename.startswith(_OURS):
            cost.calls += 1

    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(None)
        cost.peak_bytes = max(cost.peak_bytes, tracemalloc.get_traced_memory()[1] - base)
        tracemalloc.stop()


def settle() -> Awaitable[None]:
    return trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)


def costs(n: int, show_all: bool) -> tuple[Cost, Cost]:
    """What CYCLES cycles of events, and of lookups, cost among n containers."""
    engine = FakeEngine(*(entry(i) for i in range(n)))
    table = InodeTable()
    cache = EngineCache("local", engine, table, table.root, lambda _: None, show_all=show_all)
    per_event, per_lookup = Cost(), Cost()

    async def event(action: str, k: int) -> None:
        cache.on_event({"Action": action, "Actor": {"ID": cid(k)}})
        await settle()

    async def measured(cost: Cost, step: Callable[[], Awaitable[None]]) -> None:
        with counted(cost):
            await step()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_rereads, nursery)
            await cache.refresh()
            assert len(listed(cache)) == n
            for k in range(n, n + CYCLES):

                async def events(k: int = k) -> None:
                    engine.containers[cid(k)] = entry(k, "created")
                    await event("create", k)
                    engine.containers[cid(k)] = entry(k, "running")
                    await event("start", k)
                    engine.containers[cid(k)] = entry(k, "running", name=f"renamed{k}")
                    await event("rename", k)
                    engine.containers[cid(k)] = entry(k, "exited", name=f"renamed{k}")
                    await event("die", k)

                async def lookups(k: int = k) -> None:
                    for name in (f"renamed{k}", cid(k)[:12], cid(k), ".git", f"nothing{k}"):
                        await cache.find(name)

                async def removal(k: int = k) -> None:
                    del engine.containers[cid(k)]
                    await event("destroy", k)

                await measured(per_event, events)
                await measured(per_lookup, lookups)
                await measured(per_event, removal)
                assert cid(k) not in listed(cache)
            assert len(listed(cache)) == n
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return per_event, per_lookup


def assert_flat(small: Cost, large: Cost, what: str) -> None:
    # Equal but for a few calls; a copy or a walk of 10,000 containers is
    # tens of thousands of calls, or hundreds of kilobytes.
    assert large.calls <= small.calls * 1.05 + 10, (what, small, large)
    assert large.peak_bytes <= small.peak_bytes * 1.5 + 16_384, (what, small, large)


def test_an_event_and_a_lookup_cost_the_same_among_100_and_10000_containers() -> None:
    for show_all in (True, False):
        small_events, small_lookups = costs(SMALL, show_all)
        large_events, large_lookups = costs(LARGE, show_all)
        assert small_events.calls > 0 and small_lookups.calls > 0  # it counts something
        assert_flat(small_events, large_events, f"events, show_all={show_all}")
        assert_flat(small_lookups, large_lookups, f"lookups, show_all={show_all}")


def test_a_read_in_flight_across_10000_removals_does_not_bring_its_container_back() -> None:
    """A container's read is sent, the container is removed, then 10,000
    others are: the read's answer (the container as it was) lands last and
    is dropped, since its removal is still remembered; once no read is in
    flight, no removal is kept."""
    many = 10_000
    engine = FakeEngine(*(entry(n) for n in range(many + 2)))
    table = InodeTable()
    cache = EngineCache("local", engine, table, table.root, lambda _: None, show_all=True)

    async def main() -> None:
        await cache.refresh()
        engine.hold_one = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.refresh_container, cid(1))
            await engine.one.wait()  # sent: the engine still has it
            del engine.containers[cid(1)]
            cache.on_event({"Action": "destroy", "Actor": {"ID": cid(1)}})
            for n in range(2, many + 2):
                del engine.containers[cid(n)]
                cache.on_event({"Action": "destroy", "Actor": {"ID": cid(n)}})
            assert cache.removals_held() == many + 1
            engine.hold_one.set()
        assert listed(cache) == {cid(0)}
        assert cache.removals_held() == 0
        cache.on_event({"Action": "destroy", "Actor": {"ID": cid(0)}})
        assert cache.removals_held() == 0  # no read in flight: nothing to keep

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
