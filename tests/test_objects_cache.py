"""ObjectsCache's policy under trio with a fake engine: one request per
listing of a kind and none for the others, tags and network IDs as links,
a missed name asking again at most once a second, what a removal drops, and
what inspect.json asks. The real engine and mount are in test_engine_view.py."""

from __future__ import annotations

import collections
import copy
from typing import Any

import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.engine import objects
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.model.inodes import Changes, InodeTable, Kind, subdirs_of

HEX = "ab" * 32
NET = "ef" * 32


class FakeDocker:
    """The one aiodocker call docker/objects.py makes."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {
            "images/json": [
                {"Id": f"sha256:{HEX}", "RepoTags": ["busybox:latest"], "Created": 5, "Size": 9}
            ],
            "volumes": {"Volumes": [{"Name": "data", "Driver": "local"}], "Warnings": None},
            "networks": [{"Name": "backend", "Id": NET, "Driver": "bridge"}],
            "containers/json": [],
            f"images/{HEX}/json": {"Id": f"sha256:{HEX}"},
        }
        self.asked: list[tuple[str, Any]] = []

    async def _query_json(self, path: str, method: str = "GET", params: Any = None) -> Any:
        self.asked.append((path, params))
        return copy.deepcopy(self.answers[path])


class FakeSource:
    def __init__(self) -> None:
        self.docker = FakeDocker()
        self.requests: collections.Counter[str] = collections.Counter()

    async def call(self, what: str, fn: Any, timeout: Any = None) -> Any:
        self.requests[what] += 1
        return await fn(self.docker)


def make() -> tuple[ObjectsCache, FakeSource, list[Changes]]:
    source = FakeSource()
    table = InodeTable()
    seen: list[Changes] = []
    cache = ObjectsCache(
        "local",
        source,  # type: ignore[arg-type]
        table,
        table.root,
        seen.append,
        clock=trio.current_time,
    )
    return cache, source, seen


def test_each_listing_is_one_request_of_its_kind() -> None:
    cache, source, _ = make()

    async def main() -> None:
        await cache.refresh_dir(cache.dirs["images"].inode)
        await cache.refresh_dir(cache.dirs["images"].inode)
        await cache.refresh("volumes")

    trio.run(main)
    assert dict(source.requests) == {"images": 2, "volumes": 1}
    table = cache.table
    assert list(table.children(table.root)) == ["images", "volumes", "networks", "projects"]
    image = table.children(cache.dirs["images"])[HEX]
    assert table.children(image)["RepoTags"].kind is Kind.DIR
    assert table.children(table.children(image)["RepoTags"])["0"].data == b"busybox:latest\n"
    assert list(table.children(cache.dirs["volumes"])) == ["data"]
    assert table.children(cache.dirs["networks"]) == {}


def test_tags_and_network_ids_are_unlisted_links() -> None:
    cache, _, _ = make()

    async def main() -> None:
        await cache.refresh("images")
        await cache.refresh("networks")
        tag = await cache.find(cache.dirs["images"], "busybox:latest")
        assert tag is not None and tag.kind is Kind.LINK and tag.data == HEX.encode()
        by_id = await cache.find(cache.dirs["networks"], NET)
        assert by_id is not None and by_id.data == b"backend"

    trio.run(main)
    assert [n for n, _ in cache.table.listed(cache.dirs["images"])] == [HEX]


def test_a_missed_name_lists_again_at_most_once_a_second() -> None:
    cache, source, _ = make()

    async def main() -> None:
        await cache.refresh("volumes")
        assert await cache.find(cache.dirs["volumes"], "new") is None
        assert await cache.find(cache.dirs["volumes"], "new") is None
        assert source.requests["volumes"] == 2
        source.docker.answers["volumes"]["Volumes"].append({"Name": "new"})
        await trio.sleep(1.5)
        found = await cache.find(cache.dirs["volumes"], "new")
        assert found is not None and found.is_dir
        assert source.requests["volumes"] == 3

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def test_a_removed_object_goes_and_tells_the_kernel() -> None:
    cache, source, seen = make()

    async def main() -> None:
        await cache.refresh("volumes")
        data = cache.table.children(cache.dirs["volumes"])["data"]
        cache.table.remember(data)
        source.docker.answers["volumes"]["Volumes"] = []
        await cache.refresh("volumes")
        assert data.gone
        assert any(inode == data.inode for _, _, inode in seen[-1].removed)
        try:
            cache.locate(data)
        except NotFound:
            return
        raise AssertionError("a removed volume still located")

    trio.run(main)


def test_inspect_asks_by_id_and_projects_by_label() -> None:
    cache, source, _ = make()

    async def main() -> None:
        await cache.refresh("images")
        image = cache.table.children(cache.dirs["images"])[HEX]
        inspect = cache.table.children(image)["inspect.json"]
        kind, ref = cache.locate(inspect)
        assert (kind, ref) == ("images", HEX)
        assert (await cache.inspect(kind, ref))["Id"] == f"sha256:{HEX}"
        await cache.refresh("projects")

    trio.run(main)
    assert source.requests["images/inspect"] == 1
    path, params = source.docker.asked[-1]
    assert path == "containers/json"
    assert params["all"] == "1" and "com.docker.compose.project" in params["filters"]


def test_a_list_in_another_order_rebuilds_nothing() -> None:
    """Docker lists images and volumes in Go's map order, new at each answer:
    a listing that only reorders them must not rebuild their directories."""
    cache, source, _ = make()
    other = "cd" * 32
    source.docker.answers["images/json"].append({"Id": f"sha256:{other}", "Created": 5})

    async def main() -> None:
        await cache.refresh("images")
        before = cache.objects["images"]
        source.docker.answers["images/json"].reverse()
        await cache.refresh("images")
        assert cache.objects["images"] is before  # equal: kept, nothing rebuilt

    trio.run(main)


def test_a_listing_builds_no_objects_directory_until_it_is_entered() -> None:
    """A first listing of 500 images builds none of their files: each
    directory is built when something in it is asked for, with the link
    count it had before."""
    cache, _, _ = make()
    trio.run(cache.refresh, "images")
    image = cache.table.lookup(cache.dirs["images"], HEX)
    assert image is not None and image.children is None
    nlink = image.nlink
    children = cache.table.children(image)
    assert children["ID"].data == f"sha256:{HEX}\n".encode()
    assert image.nlink == nlink == 2 + len([c for c in children.values() if c.is_dir])


def test_an_objects_link_count_is_known_before_it_is_made() -> None:
    """Each kind's directory has the same subdirectories whatever the object
    holds (no labels or many, no tags or several), so the link count a first
    listing reports without making the directory is the one it has once made."""
    full: dict[str, dict[str, Any]] = {
        "images": {
            "Id": f"sha256:{HEX}",
            "RepoTags": ["a:1", "b:2"],
            "RepoDigests": ["a@sha256:" + "0" * 64],
            "Labels": {"k": "v", "x/y": "z"},
        },
        "volumes": {"Name": "v", "Labels": {"k": "v"}, "Options": {"o": "p"}},
        "networks": {
            "Id": NET,
            "Name": "n",
            "Labels": {"k": "v"},
            "IPAM": {"Config": [{"Subnet": "10.0.0.0/24"}]},
        },
    }
    for kind, obj in full.items():
        for o in (obj, {k: v for k, v in obj.items() if k in ("Id", "Name")}):
            made = objects._deferred(kind, o, ["c" * 64])
            assert subdirs_of(made.make()) == made.subdirs == objects.SUBDIRS[kind], (kind, o)


def test_a_first_listing_makes_no_objects_contents(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing 500 volumes makes none of their directories' contents: what
    makes one is called when something in it is first asked for."""
    cache, source, _ = make()
    source.docker.answers["volumes"] = {"Volumes": [{"Name": f"v{i}"} for i in range(500)]}
    made: list[str] = []
    spec = objects._SPECS["volumes"]

    def counted(volume: dict[str, Any]) -> Any:
        made.append(str(volume["Name"]))
        return spec(volume)

    monkeypatch.setitem(objects._SPECS, "volumes", counted)
    trio.run(cache.refresh, "volumes")
    assert made == []
    one = cache.table.lookup(cache.dirs["volumes"], "v7")
    assert one is not None
    assert cache.table.children(one)["Name"].data == b"v7\n"
    assert made == ["v7"]
