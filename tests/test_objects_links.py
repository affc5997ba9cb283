"""The engine view's cross links and history.json, pure and under trio with a
fake engine: who uses what (model/users.py), one container list per read of
a link directory and none for a kind's listing, and what history.json asks.
The real engine and mount are in test_engine_links.py."""

from __future__ import annotations

import os

import trio
from test_objects_cache import HEX, NET, make

from dockerfs_fuse.model.inodes import Kind
from dockerfs_fuse.model.users import users

C1, C2, C3 = "11" * 32, "22" * 32, "33" * 32


def _container(cid: str, image: str, state: str = "running", **more: object) -> dict[str, object]:
    return {"Id": cid, "ImageID": f"sha256:{image}", "State": state, **more}


CONTAINERS = [
    _container(
        C2,
        HEX,
        "exited",
        Mounts=[
            {"Type": "volume", "Name": "data", "Destination": "/data"},
            {"Type": "bind", "Source": "/srv", "Destination": "/srv"},
        ],
        NetworkSettings={"Networks": {"backend": {"NetworkID": NET}}},
    ),
    _container(
        C1,
        HEX,
        Mounts=[{"Type": "volume", "Name": "data", "Destination": "/d"}],
        NetworkSettings={"Networks": {"backend": {"NetworkID": ""}}},
    ),
    _container(C3, "cd" * 32, Mounts=[{"Type": "tmpfs", "Destination": "/t"}]),
]


def test_who_uses_what() -> None:
    found = users(CONTAINERS)
    # Stopped containers count, as `docker ps -a --filter ...` counts them.
    assert found.images == {HEX: [C1, C2], "cd" * 32: [C3]}
    # Bind and tmpfs mounts name no volume.
    assert found.volumes == {"data": [C1, C2]}
    # An endpoint without its network's ID goes by the network's name.
    assert found.networks == {NET: [C2]}
    assert found.network_names == {"backend": [C1]}


def test_a_container_that_names_nothing_is_left_out() -> None:
    found = users([{"Id": C1}, {"ImageID": f"sha256:{HEX}"}, {"Id": C2, "Mounts": None}])
    assert found.images == found.volumes == found.networks == {}


def test_link_directories_are_listed_on_read_by_one_container_list() -> None:
    cache, source, _ = make()
    source.docker.answers["containers/json"] = CONTAINERS
    table = cache.table

    async def main() -> None:
        for kind in ("images", "volumes", "networks"):
            await cache.refresh(kind)
        # Listing the kinds asked for no container.
        assert "users" not in source.requests
        image_links = table.children(table.children(cache.dirs["images"])[HEX])["Containers"]
        assert cache.lists_links(image_links.inode)
        assert not cache.lists_links(cache.dirs["images"].inode)
        assert table.children(image_links) == {}
        await cache.refresh_links()
        await cache.refresh_links()

    trio.run(main)
    assert source.requests["users"] == 2
    assert ("containers/json", {"all": "1"}) in source.docker.asked
    for kind, name, links, expected in (
        ("images", HEX, "Containers", [C1, C2]),
        ("volumes", "data", "UsedBy", [C1, C2]),
        ("networks", "backend", "Containers", [C1, C2]),
    ):
        d = table.children(table.children(cache.dirs[kind])[name])[links]
        assert cache.lists_links(d.inode)
        entries = table.children(d)
        assert list(entries) == expected, kind
        for cid, node in entries.items():
            assert node.kind is Kind.LINK
            assert node.data == os.fsencode(f"../../../containers/{cid}")


def test_a_relisted_kind_keeps_its_links_and_a_gone_container_leaves() -> None:
    cache, source, _ = make()
    source.docker.answers["containers/json"] = CONTAINERS
    table = cache.table

    def linked() -> list[str]:
        image = table.children(cache.dirs["images"])[HEX]
        return list(table.children(table.children(image)["Containers"]))

    async def main() -> None:
        await cache.refresh("images")
        await cache.refresh_links()
        source.docker.answers["images/json"][0]["Size"] = 10
        await cache.refresh("images")
        assert linked() == [C1, C2]
        source.docker.answers["containers/json"] = CONTAINERS[1:]
        await cache.refresh_links()
        assert linked() == [C1]

    trio.run(main)


def test_history_asks_once_per_call_and_only_of_an_image() -> None:
    cache, source, _ = make()
    source.docker.answers[f"images/{HEX}/history"] = [{"Id": f"sha256:{HEX}", "Size": 9}]

    async def main() -> None:
        await cache.refresh("images")
        image = cache.table.children(cache.dirs["images"])[HEX]
        history = cache.table.children(image)["history.json"]
        kind, ref = cache.locate(history)
        assert await cache.history(kind, ref) == [{"Id": f"sha256:{HEX}", "Size": 9}]

    trio.run(main)
    assert source.requests["images/history"] == 1
