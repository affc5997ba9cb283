"""Helper containers' lifecycle (engine/helpers.py) under trio with a fake
engine: one made per thing shown however many ask at once, labelled as ours,
kept while held, removed when idle and when the run ends, and leftovers of a
dead owner on this host removed at the start, never a live one's."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.engine.helpers import (
    HELPER_LABEL,
    KEEP_VOLUMES_LABEL,
    OF_LABEL,
    OWNER_LABEL,
    Helpers,
)

MINE = "host-a boot-1 4242"


class FakeEngine:
    def __init__(self) -> None:
        self.containers: dict[str, dict[str, Any]] = {}
        self.creates = 0
        self.slow = trio.Event()
        self.slow.set()
        self.removed_volumes: dict[str, bool] = {}  # removed: with its volumes (v=1)?

    async def create(self, body: dict[str, Any]) -> str:
        self.creates += 1
        await self.slow.wait()
        cid = f"{self.creates:064x}"
        self.containers[cid] = {"Id": cid, "Labels": body["Labels"], "body": body}
        return cid

    async def remove(self, cid: str, volumes: bool) -> None:
        if self.containers.pop(cid, None) is None:
            raise NotFound(cid)
        self.removed_volumes[cid] = volumes

    async def list_ours(self) -> list[dict[str, Any]]:
        return [c for c in self.containers.values() if HELPER_LABEL in c["Labels"]]


async def body() -> dict[str, Any]:
    return {"Image": "sha256:abc", "Labels": {"user": "kept"}}


def run(test: Any) -> None:
    trio.run(test, clock=trio.testing.MockClock(autojump_threshold=0))


def test_one_helper_for_readers_that_come_at_once_labelled_as_ours() -> None:
    async def main() -> None:
        engine = FakeEngine()
        helpers = Helpers(engine, owner=MINE)
        engine.slow = trio.Event()
        got: list[str] = []

        async def reader() -> None:
            got.append(await helpers.acquire("image-root", "img1", body))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            engine.slow.set()
        assert engine.creates == 1 and len(set(got)) == 1
        labels = engine.containers[got[0]]["Labels"]
        assert labels == {
            "user": "kept",
            HELPER_LABEL: "image-root",
            OWNER_LABEL: MINE,
            OF_LABEL: "img1",
        }
        # Another image, another helper.
        assert await helpers.acquire("image-root", "img2", body) != got[0]

    run(main)


def test_a_held_helper_stays_an_idle_one_goes() -> None:
    async def main() -> None:
        engine = FakeEngine()
        removed: list[str] = []
        helpers = Helpers(engine, owner=MINE, idle=10, on_removed=removed.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(helpers.run)
            held = await helpers.acquire("image-root", "img1", body)
            async with helpers.held("image-root", "img2", body) as brief:
                pass
            await trio.sleep(100)
            assert brief not in engine.containers and removed == [brief]
            assert held in engine.containers  # still held
            helpers.release("image-root", "img1", held)
            await trio.sleep(5)
            assert held in engine.containers  # idle, not for long enough yet
            await trio.sleep(10)
            assert held not in engine.containers
            # The next reader makes a new one.
            again = await helpers.acquire("image-root", "img1", body)
            assert again != held and again in engine.containers
            nursery.cancel_scope.cancel()
        # The run's end (unmount) removes the rest, held or not.
        assert engine.containers == {}

    run(main)


def test_leftovers_of_a_dead_owner_on_this_host_go_at_the_start() -> None:
    async def main() -> None:
        engine = FakeEngine()

        def left(owner: str, labels: dict[str, str] | None = None) -> str:
            cid = f"{len(engine.containers) + 100:064x}"
            engine.containers[cid] = {
                "Id": cid,
                "Labels": labels if labels is not None else {HELPER_LABEL: "x", OWNER_LABEL: owner},
            }
            return cid

        other_boot = left("host-a boot-0 4242")
        dead_pid = left("host-a boot-1 999999999")  # no such process
        other_host = left("host-b boot-1 1")
        garbled = left("nonsense")
        mine = left(MINE)
        await Helpers(engine, owner=MINE).remove_leftovers()
        assert set(engine.containers) == {other_host, garbled, mine}
        assert other_boot not in engine.containers and dead_pid not in engine.containers

    run(main)


def test_a_helper_that_mounts_a_users_volume_is_removed_without_volumes() -> None:
    """Podman removes an anonymous volume with the last container that has it:
    a volume's helper (KEEP_VOLUMES_LABEL) goes without `v=1`, idle or left by a
    dead daemon; an image's goes with its own anonymous volumes."""

    async def keeps() -> dict[str, Any]:
        return {"Image": "sha256:abc", "Labels": {KEEP_VOLUMES_LABEL: "1"}}

    async def main() -> None:
        engine = FakeEngine()
        helpers = Helpers(engine, owner=MINE, idle=10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(helpers.run)
            for purpose, make in (("volume-data", keeps), ("image-root", body)):
                async with helpers.held(purpose, "x", make):
                    pass
            await trio.sleep(100)
            nursery.cancel_scope.cancel()
        assert sorted(engine.removed_volumes.values()) == [False, True]
        dead = f"{999:064x}"
        engine.containers[dead] = {
            "Id": dead,
            "Labels": {
                HELPER_LABEL: "volume-data",
                OWNER_LABEL: "host-a boot-1 999999999",
                KEEP_VOLUMES_LABEL: "1",
            },
        }
        await Helpers(engine, owner=MINE).remove_leftovers()
        assert engine.removed_volumes[dead] is False

    run(main)


def test_a_helper_the_engine_removed_is_made_anew_by_the_next_reader() -> None:
    """`docker container prune` removes an idle helper: its destroy event
    (EngineCache.removal_listeners) drops the record, and the next reader
    gets a new helper rather than the removed one's ID."""

    async def main() -> None:
        engine = FakeEngine()
        removed: list[str] = []
        helpers = Helpers(engine, owner=MINE, on_removed=removed.append)
        first = await helpers.acquire("image-root", "img1", body)
        helpers.release("image-root", "img1", first)
        del engine.containers[first]  # pruned
        helpers.gone(first)
        assert removed == [first] and len(helpers) == 0
        again = await helpers.acquire("image-root", "img1", body)
        assert again != first and again in engine.containers
        helpers.gone(f"{12345:064x}")  # not ours: nothing happens
        assert len(helpers) == 1

    run(main)
