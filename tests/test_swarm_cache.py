"""SwarmCache's policy under trio with a fake engine answering recorded lists
(tests/data/swarm-*.json): what a listing builds, the aliases, what an event
does without a listing, and when the cluster counts as settled. The real
cluster and mount are in test_swarm_mount.py."""

from __future__ import annotations

import collections
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import trio

from dockerfs_fuse.docker.errors import NotManager
from dockerfs_fuse.engine.swarm import SwarmCache, settled
from dockerfs_fuse.model.inodes import Changes, InodeTable, Kind

DATA = Path(__file__).parent / "data"


def load(name: str) -> Any:
    return json.loads((DATA / f"swarm-{name}.json").read_text())


class FakeDocker:
    """The one aiodocker call docker_swarm's list calls make."""

    def __init__(self) -> None:
        self.answers = {k: load(k) for k in ("services", "nodes", "tasks")}

    async def _query_json(self, path: str, method: str = "GET", params: Any = None) -> Any:
        answer = self.answers[path]
        if isinstance(answer, Exception):
            raise answer
        return copy.deepcopy(answer)


class FakeSource:
    def __init__(self) -> None:
        self.docker = FakeDocker()
        self.requests: collections.Counter[str] = collections.Counter()

    async def call(self, what: str, fn: Any, timeout: Any = None) -> Any:
        self.requests[what] += 1
        return await fn(self.docker)


def make() -> tuple[SwarmCache, FakeSource, list[Changes]]:
    source = FakeSource()
    table = InodeTable()
    seen: list[Changes] = []
    cache = SwarmCache("local", source, table, table.root, seen.append)  # type: ignore[arg-type]
    return cache, source, seen


async def listed(cache: SwarmCache) -> None:
    for kind in ("services", "nodes", "tasks"):
        await cache.refresh(kind)


def test_each_list_is_one_request_and_builds_its_directory() -> None:
    cache, source, _ = make()

    async def main() -> None:
        await listed(cache)

    trio.run(main)
    assert dict(source.requests) == {"services": 1, "nodes": 1, "tasks": 1}
    table = cache.table
    assert list(table.children(table.root)) == ["services", "nodes", "tasks"]
    services = table.children(cache.dirs["services"])
    assert sorted(services) == ["broken", "edge", "once", "ticker", "web"]
    web = table.children(services["web"])
    assert web["Replicas"].data == b"4\n"
    slots = table.children(web["tasks"])
    assert sorted(slots) == ["1", "2", "3", "4"]
    link = slots["1"]
    assert link.kind is Kind.LINK
    tid = link.data.decode().rsplit("/", 1)[1]
    assert link.data == f"../../../tasks/{tid}".encode()
    assert tid in table.children(cache.dirs["tasks"])
    assert sorted(table.children(cache.dirs["nodes"])) == ["node1", "node2", "node3"]


def test_ids_are_unlisted_aliases() -> None:
    cache, _, _ = make()

    async def main() -> None:
        await listed(cache)
        web_id = cache.table.children(cache.dirs["services"])["web"].children["ID"].data  # type: ignore[index]
        alias = await cache.find(cache.dirs["services"], web_id.decode().strip())
        assert alias is not None and alias.kind is Kind.LINK and alias.data == b"web"
        node = await cache.find(cache.dirs["nodes"], "4tfswgvak61h086bymah2guc9")
        assert node is not None and node.kind is Kind.LINK and node.data == b"node2"
        assert "4tfswgvak61h086bymah2guc9" not in cache.table.children(cache.dirs["nodes"])

    trio.run(main)


def test_a_removed_service_goes_on_its_event_without_a_listing() -> None:
    cache, source, seen = make()

    async def main() -> None:
        await listed(cache)
        services = cache.dirs["services"]
        web = cache.table.children(services)["web"]
        cache.table.remember(web)  # the kernel holds it: it must hear of the removal
        before = dict(source.requests)
        sid = web.children["ID"].data.decode().strip()  # type: ignore[index]
        cache.on_event({"Type": "service", "Action": "remove", "Actor": {"ID": sid}})
        assert "web" not in cache.table.children(services)
        assert dict(source.requests) == before
        assert any((services.inode, "web", web.inode) in c.removed for c in seen)

    trio.run(main)


def test_a_changed_listing_moves_its_directory_mtime() -> None:
    cache, source, _ = make()

    async def main() -> None:
        await listed(cache)
        services = cache.dirs["services"]
        cache.table.remember(services)
        before = services.mtime_ns
        source.docker.answers["services"] = source.docker.answers["services"][1:]
        await cache.refresh("services")
        assert services.mtime_ns > before

    trio.run(main)


def test_settled() -> None:
    services, tasks = load("services"), load("tasks")
    # The recording holds services that never run (broken, once): not settled.
    assert not settled(services, tasks)
    web = [s for s in services if s["Spec"]["Name"] == "web"]
    web_tasks = [
        t for t in tasks if t["ServiceID"] == web[0]["ID"] and t["DesiredState"] == "running"
    ]
    assert settled(web, web_tasks)
    updating = copy.deepcopy(web)
    updating[0]["UpdateStatus"] = {"State": "updating"}
    assert not settled(updating, web_tasks)
    starting = copy.deepcopy(web_tasks)
    starting[0]["Status"]["State"] = "starting"
    assert not settled(web, starting)


def test_an_optional_cluster_view_lists_nothing_when_its_engine_manages_none() -> None:
    """The engine view's swarm/: a refusal (NotManager) is an empty listing
    there, and the error it always was in the swarm view."""
    cache, source, _ = make()
    table = InodeTable()
    optional = SwarmCache("local", source, table, table.root, [].append, optional=True)  # type: ignore[arg-type]

    async def main() -> None:
        await listed(optional)
        assert table.children(optional.dirs["services"])
        refusal = NotManager("This node is not a swarm manager.")
        source.docker.answers = collections.defaultdict(lambda: refusal)
        await optional.refresh("services")
        assert table.children(optional.dirs["services"]) == {}
        with pytest.raises(NotManager):
            await cache.refresh("services")

    trio.run(main)
