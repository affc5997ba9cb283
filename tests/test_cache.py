"""The per-engine cache under trio with a fake engine (pure, no Docker, no FUSE).

The fake answers from a dict and can hold a listing in flight, so the races
the cache is built for are played out exactly: a listing and a newer event,
the re-reads after events, shared listings, and two engines in one table.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import DockerUnavailable
from dockerfs_fuse.docker.source import LISTED_STATES
from dockerfs_fuse.engine.archive import ArchiveWriter
from dockerfs_fuse.engine.containers import (
    ATTR_TIMEOUT_ENV,
    DEFAULT_ATTR_TIMEOUT,
    EVENT_REREAD_DELAYS,
    EngineCache,
    attr_timeout_from,
)
from dockerfs_fuse.engine.logs import LogWriter
from dockerfs_fuse.engine.spool import Cancellable
from dockerfs_fuse.fuse import invalidate
from dockerfs_fuse.fuse.invalidate import INVALIDATION_QUEUE, Invalidator
from dockerfs_fuse.model.containers import Container
from dockerfs_fuse.model.ctl import Command
from dockerfs_fuse.model.inodes import Changes, InodeTable, Kind, Node


def cid(n: int) -> str:
    return f"{n:064x}"


def entry(n: int, state: str = "running", name: str = "") -> Container:
    return {"Id": cid(n), "Names": [f"/{name or f'c{n}'}"], "State": state, "Created": n}


class FakeStream:
    def __init__(self, recv: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
        self.recv = recv

    def close(self) -> None:
        pass

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for event in self.recv:
            yield event


class FakeEngine:
    """Containers in a dict; a listing can be held in flight with `hold`."""

    def __init__(self, *containers: Container) -> None:
        self.containers = {str(c["Id"]): c for c in containers}
        self.requests: collections.Counter[str] = collections.Counter()
        self.hold: trio.Event | None = None
        self.listing = trio.Event()  # set when a listing has been asked for
        self.hold_one: trio.Event | None = None  # likewise for one container's read
        self.one = trio.Event()
        self.down = False
        self.send, recv = trio.open_memory_channel[dict[str, Any]](100)
        self.stream = FakeStream(recv)

    async def list_containers(self, all: bool = False) -> list[Container]:
        self.requests["containers/json"] += 1
        if self.down:
            raise DockerUnavailable("engine down")
        # what the engine said when asked
        answer = [c for c in self.containers.values() if all or c["State"] in LISTED_STATES]
        self.listing.set()
        if self.hold is not None:
            await self.hold.wait()
        return answer

    async def list_one(self, id_: str, all: bool = False) -> Container | None:
        self.requests["containers/json?filters"] += 1
        if self.down:
            raise DockerUnavailable("engine down")
        answer = self.containers.get(id_)  # what the engine said when asked
        self.one.set()
        if self.hold_one is not None:
            await self.hold_one.wait()
        return answer

    async def list_ids(self, ids: Sequence[str], all: bool = False) -> list[Container]:
        self.requests["containers/json?filters"] += 1
        return [self.containers[i] for i in ids if i in self.containers]

    async def find(self, name: str, all: bool = False) -> list[Container]:
        self.requests["containers/json?filters"] += 1
        return [
            c
            for c in self.containers.values()
            if f"/{name}" in c["Names"] or (len(name) >= 4 and str(c["Id"]).startswith(name))
        ]

    async def inspect(self, id_: str) -> dict[str, Any]:
        return dict(self.containers[id_])

    async def control(self, id_: str, command: Command) -> None:
        self.requests["control"] += 1

    async def identify(self) -> None:
        pass

    def events(self) -> FakeStream:
        return self.stream

    def stream_logs(self, id_: str, out: LogWriter, follow: bool) -> Cancellable:
        raise AssertionError("no logs here")

    def stream_archive(self, id_: str, path: str, out: ArchiveWriter) -> Cancellable:
        raise AssertionError("no container files here (test_container_fs_unit.py)")

    async def top(self, id_: str) -> dict[str, Any]:
        raise AssertionError("no top here")

    async def stats(self, id_: str) -> dict[str, Any]:
        raise AssertionError("no stats here")

    def wait(self, id_: str) -> Any:
        raise AssertionError("no wait here")

    def event(self, action: str, n: int) -> None:
        self.send.send_nowait({"Type": "container", "Action": action, "Actor": {"ID": cid(n)}})


def make_cache(
    engine: FakeEngine, table: InodeTable | None = None, top_name: str = ""
) -> tuple[EngineCache, list[Changes]]:
    table = table or InodeTable()
    top = table.add_dir(top_name) if top_name else table.root
    changes: list[Changes] = []
    return EngineCache(top_name or "local", engine, table, top, changes.append), changes


def listed(cache: EngineCache) -> set[str]:
    return set(cache.table.children(cache.top))


def test_an_event_newer_than_a_listing_in_flight_wins() -> None:
    """`docker rm` while a slow listing that still shows it is in flight, and
    the event's own re-reads done before that listing lands: the listing puts
    the container back, so the cache reads it again and it goes."""
    engine = FakeEngine(entry(1), entry(2))
    cache, _ = make_cache(engine)

    async def main() -> None:
        engine.hold = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_rereads, nursery)
            nursery.start_soon(cache.refresh)
            await engine.listing.wait()
            del engine.containers[cid(2)]
            cache.on_event({"Action": "destroy", "Actor": {"ID": cid(2)}})
            await trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)  # the event's re-reads are done
            rereads = engine.requests["containers/json?filters"]
            assert rereads == len(EVENT_REREAD_DELAYS)
            engine.hold.set()  # the stale listing lands
            await trio.testing.wait_all_tasks_blocked()
            assert cid(2) in listed(cache)
            await trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)
            assert engine.requests["containers/json?filters"] > rereads
            assert listed(cache) == {cid(1)}
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_every_event_during_a_listing_is_read_again_however_many_and_none_kept_after() -> None:
    """10,000 containers removed while a listing that still shows them all is
    in flight: once it lands, each is read again and goes; with no listing in
    flight, no event is kept (memory is bounded by the events of one listing)."""
    many = 10_000
    engine = FakeEngine(*(entry(n) for n in range(many + 1)))
    cache, _ = make_cache(engine)

    async def main() -> None:
        engine.hold = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_rereads, nursery)
            nursery.start_soon(cache.refresh)
            await engine.listing.wait()
            for n in range(1, many + 1):
                del engine.containers[cid(n)]
                cache.on_event({"Action": "destroy", "Actor": {"ID": cid(n)}})
            await trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)  # the events' re-reads are done
            engine.hold.set()  # the stale listing lands, showing them all
            await trio.testing.wait_all_tasks_blocked()
            assert len(listed(cache)) == many + 1
            await trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)
            assert listed(cache) == {cid(0)}
            assert not cache.events_held()
            cache.on_event({"Action": "die", "Actor": {"ID": cid(0)}})
            assert not cache.events_held()
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_lookup_of_a_container_just_removed_asks_nothing() -> None:
    """After its destroy event, the kernel looks the ID up again (its entry
    was dropped): ENOENT from the event, not from a search of every container."""
    engine = FakeEngine(entry(1), entry(2))
    cache, _ = make_cache(engine)

    async def main() -> None:
        await cache.refresh()
        assert await cache.find(cid(2)) is not None
        del engine.containers[cid(2)]
        cache.on_event({"Action": "destroy", "Actor": {"ID": cid(2)}})
        asked = engine.requests["containers/json?filters"]
        assert await cache.find(cid(2)) is None
        assert engine.requests["containers/json?filters"] == asked

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_burst_of_events_is_read_twice_not_per_event() -> None:
    engine = FakeEngine(entry(1))
    cache, _ = make_cache(engine)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.run_events)
            await engine.listing.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert listed(cache) == {cid(1)}
            engine.containers[cid(3)] = entry(3, "created")
            engine.event("create", 3)
            engine.containers[cid(3)] = entry(3, "running")
            engine.event("start", 3)
            await trio.sleep(sum(EVENT_REREAD_DELAYS) + 1)
            # Folded into one re-read after the first delay, plus the late one.
            assert engine.requests["containers/json?filters"] == len(EVENT_REREAD_DELAYS)
            assert cache.table.children(cache.top)[cid(3)].raw == entry(3, "running")
            # Podman says `remove` where Docker says `destroy`: gone at once.
            del engine.containers[cid(3)]
            engine.event("remove", 3)
            await trio.testing.wait_all_tasks_blocked()
            assert listed(cache) == {cid(1)}
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_concurrent_refreshes_share_one_listing() -> None:
    engine = FakeEngine(entry(1))
    cache, _ = make_cache(engine)

    async def main() -> None:
        engine.hold = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(cache.refresh)
            await trio.testing.wait_all_tasks_blocked()
            engine.hold.set()
        assert engine.requests["containers/json"] == 1
        await cache.refresh()
        assert engine.requests["containers/json"] == 2

    trio.run(main)


def test_a_dropped_stream_lists_again_on_reconnect_and_marks_the_engine_down() -> None:
    engine = FakeEngine(entry(1))
    cache, _ = make_cache(engine)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            engine.down = True
            nursery.start_soon(cache.run_events)
            await trio.sleep(3)
            assert not cache.events_up and listed(cache) == set()
            engine.down = False
            await trio.sleep(2)
            assert cache.events_up and listed(cache) == {cid(1)}
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_two_engines_share_a_table_and_keep_apart() -> None:
    """Each engine's containers, names and aliases live under its own directory;
    refreshing one asks nothing of the other; inode numbers never collide."""
    table = InodeTable()
    prod_engine = FakeEngine(entry(1, name="web"))
    dev_engine = FakeEngine(entry(1, name="web"), entry(2, name="db"))
    prod, _ = make_cache(prod_engine, table, "prod")
    dev, _ = make_cache(dev_engine, table, "dev")

    async def main() -> None:
        await prod.refresh()
        assert dev_engine.requests["containers/json"] == 0
        await dev.refresh()
        assert set(table.children(table.root)) == {"prod", "dev"}
        assert listed(prod) == {cid(1)} and listed(dev) == {cid(1), cid(2)}
        p1, d1 = table.children(prod.top)[cid(1)], table.children(dev.top)[cid(1)]
        assert p1.inode != d1.inode and p1.parent is prod.top and d1.parent is dev.top
        web = await prod.find("web")
        assert web is not None and web.parent is prod.top and web.data == cid(1).encode()
        assert await prod.find("db") is None  # dev's name, not prod's
        db = await dev.find("db")
        assert db is not None and db.parent is dev.top
        # `..` of a container is its engine's directory; of that, the root.
        assert table.lookup(p1, "..") is prod.top and table.lookup(prod.top, "..") is table.root
        before = dev_engine.requests.copy()
        prod_engine.containers.clear()
        await prod.refresh()
        assert listed(prod) == set() and listed(dev) == {cid(1), cid(2)}
        assert dev_engine.requests == before

    trio.run(main)


def held(cache: EngineCache, name: str) -> Node:
    """The node the kernel reaches by `name` in the top directory, now held by it."""

    async def find() -> Node | None:
        return await cache.find(name)

    node = trio.run(find)
    assert node is not None, name
    if node.kind is Kind.LINK:
        node = cache.table.lookup(cache.top, node.data.decode())
        assert node is not None, name
    cache.table.remember(node)
    return node


def state_of(cache: EngineCache, node: Node) -> bytes:
    return cache.table.children(node)["State"].data


def test_a_listing_that_drops_a_held_container_keeps_it_reachable_as_it_is_now() -> None:
    """A container the kernel holds and a listing leaves out is re-read in that
    listing's time: stopped, it stays (same inode, State `exited`, unlisted);
    removed, it goes. One filtered request for all of them; none for the rest."""
    engine = FakeEngine(entry(1), entry(2), entry(3), entry(4))
    cache, _ = make_cache(engine)
    trio.run(cache.refresh)
    one, two = held(cache, cid(1)), held(cache, cid(2))
    state_of(cache, one)  # built
    engine.containers[cid(1)] = entry(1, "exited")
    del engine.containers[cid(2)]
    engine.containers[cid(3)] = entry(3, "exited")  # nobody holds it
    reads = engine.requests["containers/json?filters"]
    trio.run(cache.refresh)
    assert engine.requests["containers/json?filters"] == reads + 1
    assert listed(cache) == {cid(4)}
    assert cache.table.lookup(cache.top, cid(1)) is one and not one.gone
    assert state_of(cache, one) == b"exited\n"
    assert two.gone and cache.table.lookup(cache.top, cid(2)) is None
    assert cache.table.lookup(cache.top, cid(3)) is None
    # Started again: listed again, under the same inode.
    engine.containers[cid(1)] = entry(1)
    trio.run(cache.refresh)
    assert listed(cache) == {cid(1), cid(4)} and cache.table.children(cache.top)[cid(1)] is one
    assert state_of(cache, one) == b"running\n"


def test_a_stopped_container_is_reached_by_name_id_and_prefix_without_being_listed() -> None:
    engine = FakeEngine(entry(1, name="web"), entry(0x1234 << 240, "exited", name="job"))
    stopped = cid(0x1234 << 240)
    cache, _ = make_cache(engine)

    async def main() -> None:
        await cache.refresh()
        assert listed(cache) == {cid(1)}
        job = await cache.find("job")
        assert job is not None and job.kind is Kind.LINK and job.data == stopped.encode()
        node = cache.table.lookup(cache.top, stopped)
        assert node is not None and state_of(cache, node) == b"exited\n"
        assert await cache.find(stopped) is node
        prefix = await cache.find(stopped[:6])
        assert prefix is not None and prefix.data == stopped.encode()
        await cache.refresh()
        assert listed(cache) == {cid(1)}

    trio.run(main)


def test_a_held_container_that_stops_leaves_the_listing_not_the_tree() -> None:
    """`echo stop > web/ctl`, then `start` and `rm` through the same name."""
    engine = FakeEngine(entry(1, name="web"))
    cache, _ = make_cache(engine)
    trio.run(cache.refresh)
    web = held(cache, "web")
    engine.containers[cid(1)] = entry(1, "exited", name="web")
    trio.run(cache.refresh_container, cid(1))
    assert listed(cache) == set()
    assert held(cache, "web") is web and state_of(cache, web) == b"exited\n"
    engine.containers[cid(1)] = entry(1, name="web")
    trio.run(cache.refresh_container, cid(1))
    assert listed(cache) == {cid(1)} and cache.table.children(cache.top)[cid(1)] is web
    engine.containers[cid(1)] = entry(1, "exited", name="web")
    trio.run(cache.refresh_container, cid(1))
    del engine.containers[cid(1)]
    trio.run(cache.refresh_container, cid(1))
    assert web.gone and cache.table.lookup(cache.top, cid(1)) is None
    # One nobody holds that stops just leaves.
    engine.containers[cid(2)] = entry(2)
    trio.run(cache.refresh)
    engine.containers[cid(2)] = entry(2, "exited")
    trio.run(cache.refresh_container, cid(2))
    assert cache.table.lookup(cache.top, cid(2)) is None


def test_an_unlisted_container_goes_when_the_kernel_forgets_it() -> None:
    engine = FakeEngine(entry(1, "exited"))
    cache, _ = make_cache(engine)
    trio.run(cache.refresh)
    node = held(cache, cid(1))
    cache.table.forget(node.inode, 1)
    assert cache.table.lookup(cache.top, cid(1)) is None and node.inode not in cache.table


def test_invalidations_beyond_a_full_queue_are_merged_not_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With kernel caching a lost invalidation is stale for an hour: a burst
    that fills the queue is merged (each entry and inode once) and pushed."""
    invalidator = Invalidator(kernel_cache=True)
    entries: list[tuple[int, str]] = []
    inodes: list[int] = []

    def invalidate_entry(parent: int, name: bytes, ignore_enoent: bool = False) -> None:
        entries.append((parent, name.decode()))

    def invalidate_inodes(changed: list[int], attr_only: bool) -> None:
        inodes.extend(changed)

    monkeypatch.setattr(pyfuse3, "invalidate_entry_async", invalidate_entry)
    monkeypatch.setattr(invalidate, "invalidate_inodes", invalidate_inodes)
    for i in range(INVALIDATION_QUEUE):  # the queue, full
        invalidator.apply(Changes(changed=[i]))
    extra = 50
    for j in range(10 * extra):  # a burst beyond it, each change ten times
        k = j % extra
        invalidator.apply(
            Changes(removed=[(1, f"c{k}", 5000 + k)], changed=[INVALIDATION_QUEUE + k])
        )

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(invalidator.run)
            with trio.fail_after(30):
                while len(inodes) < INVALIDATION_QUEUE + extra:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()

    trio.run(main)
    # Nothing lost, and the merged burst pushed once per inode and entry.
    assert sorted(inodes) == list(range(INVALIDATION_QUEUE + extra))
    assert sorted(entries) == sorted((1, f"c{k}") for k in range(extra))


def test_the_attribute_timeout_tests_may_set_is_bounded() -> None:
    assert attr_timeout_from({}) == DEFAULT_ATTR_TIMEOUT
    assert attr_timeout_from({ATTR_TIMEOUT_ENV: " 120 "}) == 120.0
    assert attr_timeout_from({ATTR_TIMEOUT_ENV: "0.5"}) == 0.5
    for bad in ("0", "-1", "nan", "inf", "1e9", "soon"):
        assert attr_timeout_from({ATTR_TIMEOUT_ENV: bad}) == DEFAULT_ATTR_TIMEOUT, bad


def test_a_read_sent_before_a_listing_cannot_undo_it() -> None:
    """A container's re-read (after an event) answers late, with what it was
    before `docker rm`; a listing sent after it has already found it gone. The
    late answer must not bring the container back."""
    engine = FakeEngine(entry(1), entry(2))
    cache, _ = make_cache(engine)
    trio.run(cache.refresh)
    state_of(cache, held(cache, cid(2)))

    async def main() -> None:
        engine.hold_one = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.refresh_container, cid(2))
            await engine.one.wait()  # in flight, with the answer from before the rm
            del engine.containers[cid(2)]
            await cache.refresh()
            assert cache.table.lookup(cache.top, cid(2)) is None
            engine.hold_one.set()
        assert cache.table.lookup(cache.top, cid(2)) is None
        assert listed(cache) == {cid(1)}

    trio.run(main)


def test_a_read_in_flight_across_a_removal_event_is_dropped() -> None:
    engine = FakeEngine(entry(1), entry(2))
    cache, _ = make_cache(engine)
    trio.run(cache.refresh)

    async def main() -> None:
        engine.hold_one = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cache.refresh_container, cid(2))
            await engine.one.wait()
            del engine.containers[cid(2)]
            cache.on_event({"Action": "destroy", "Actor": {"ID": cid(2)}})
            assert cid(2) not in listed(cache)
            engine.hold_one.set()
        assert cid(2) not in listed(cache)

    trio.run(main)
