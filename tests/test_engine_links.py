"""`--view=engine`'s cross links and history.json on a real mount over the
private dockerd: images/<id>/Containers/, volumes/<name>/UsedBy/ and
networks/<name>/Containers/ against `docker ps -a --filter ...` and the
engine's API, stopped containers included; the silent cases (a dangling
image, an anonymous volume, the built-in networks); what each listing asks."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount
from support.private_dockerd import IMAGE
from test_engine_view import lines, settled

pytestmark = [pytest.mark.docker, pytest.mark.fuse]


def ps_all(engine: Engine, flt: str) -> set[str]:
    """What the CLI counts: `docker ps -a --filter FLT`, full IDs."""
    return lines(engine.docker("ps", "-a", "-q", "--no-trunc", "--filter", flt))


def run_on(engine: Engine, network: str, *args: str) -> str:
    """`docker run -d --network NETWORK ...` (engine.run always means --network=none)."""
    cid = lines(engine.docker("run", "-d", "--network", network, *args)).pop()
    engine.started.append(cid)
    return cid


def image_of(engine: Engine, ref: str) -> str:
    return str(engine.api(f"/images/{ref}/json")["Id"]).removeprefix("sha256:")


def assert_links(d: Path, expected: set[str]) -> None:
    """`d` lists exactly these containers, each a link into containers/ that resolves."""
    assert set(os.listdir(d)) == expected
    for cid in expected:
        assert os.readlink(d / cid) == f"../../../containers/{cid}"
        assert (d / cid / "ID").read_text() == cid + "\n"


def made_from(engine: Engine, ids: set[str], image: str) -> set[str]:
    """Those of `ids` the API says were made from exactly `image` (the CLI's
    ancestor filter also counts images built on it)."""
    return {c for c in ids if engine.api(f"/containers/{c}/json")["Image"] == f"sha256:{image}"}


def test_an_images_containers_stopped_ones_too(engine: Engine, view: Mount) -> None:
    running = engine.run(IMAGE, "sleep", "1d")
    stopped = lines(engine.docker("create", IMAGE, "true")).pop()
    engine.started.append(stopped)
    image = image_of(engine, IMAGE)
    d = view.path / "images" / image / "Containers"
    expected = made_from(engine, ps_all(engine, f"ancestor={image}"), image)
    assert {running, stopped} <= expected
    assert_links(d, expected)
    # Gone from the link directory at its next read.
    engine.docker("rm", "-f", stopped)
    assert stopped not in os.listdir(d)
    assert running in os.listdir(d)


@pytest.fixture
def dangling(engine: Engine, suffix: str) -> Iterator[tuple[str, str]]:
    """A dangling image (its only tag moved to another) and a container made from it."""
    base = engine.run(IMAGE, "sleep", "1d")
    tag = f"ev-dangle-{suffix}:1"
    engine.docker("commit", "-c", "LABEL first=1", base, tag)
    old = image_of(engine, tag)
    user = lines(engine.docker("create", old, "true")).pop()
    engine.started.append(user)
    engine.docker("commit", "-c", "LABEL second=1", base, tag)
    yield old, user
    engine.docker("rm", "-f", user, check=False)
    engine.docker("rmi", "-f", tag, old, check=False)


def test_a_dangling_image_is_listed_with_its_containers(
    engine: Engine, view: Mount, dangling: tuple[str, str]
) -> None:
    old, user = dangling
    dangled = lines(engine.docker("images", "-q", "--no-trunc", "--filter", "dangling=true"))
    assert f"sha256:{old}" in dangled
    images = view.path / "images"
    listed = {i.removeprefix("sha256:") for i in lines(engine.docker("images", "--no-trunc", "-q"))}
    assert old in listed and set(os.listdir(images)) == listed | {"clone"}
    assert os.listdir(images / old / "RepoTags") == []
    assert "<none>:<none>" not in os.listdir(images)
    assert_links(images / old / "Containers", {user})
    assert ps_all(engine, f"ancestor={old}") == {user}


def test_history_is_the_apis(engine: Engine, view: Mount) -> None:
    image = image_of(engine, IMAGE)
    path = view.path / "images" / image / "history.json"
    assert "history.json" in os.listdir(path.parent)
    before = view.stats()["requests"].get("images/history", 0)
    text = path.read_text()
    assert json.loads(text) == engine.api(f"/images/{image}/history")
    assert text.startswith("[\n    {")  # pretty-printed, as inspect.json
    after = view.stats()["requests"].get("images/history", 0)
    assert after == before + 1  # asked once per open
    # Only an image has one.
    assert not (view.path / "volumes" / "history.json").exists()


@pytest.fixture
def volume(engine: Engine, suffix: str) -> Iterator[str]:
    name = f"ev-used-{suffix}"
    engine.docker("volume", "create", name)
    yield name
    engine.docker("volume", "rm", "-f", name, check=False)


def test_a_volumes_users_against_the_cli(engine: Engine, view: Mount, volume: str) -> None:
    running = engine.run("-v", f"{volume}:/data", IMAGE, "sleep", "1d")
    stopped = lines(engine.docker("create", "--mount", f"type=volume,src={volume},dst=/d",
                                  IMAGE, "true")).pop()  # fmt: skip
    engine.started.append(stopped)
    bind = engine.run("-v", "/tmp:/data", IMAGE, "sleep", "1d")
    d = view.path / "volumes" / volume / "UsedBy"
    expected = ps_all(engine, f"volume={volume}")
    assert expected == {running, stopped}
    assert_links(d, expected)
    assert bind not in os.listdir(d)


def test_an_anonymous_volume_is_listed_by_its_name_with_its_user(
    engine: Engine, view: Mount
) -> None:
    cid = engine.run("-v", "/anon", IMAGE, "sleep", "1d")
    mounts = engine.api(f"/containers/{cid}/json")["Mounts"]
    name = next(m["Name"] for m in mounts if m["Destination"] == "/anon")
    top = view.path / "volumes"
    assert set(os.listdir(top)) == lines(engine.docker("volume", "ls", "-q")) | {"clone"}
    assert name in os.listdir(top) and len(name) == 64
    assert_links(top / name / "UsedBy", ps_all(engine, f"volume={name}"))
    assert os.listdir(top / name / "UsedBy") == [cid]
    engine.docker("rm", "-f", "-v", cid)


@pytest.fixture
def network(engine: Engine, suffix: str) -> Iterator[str]:
    name = f"ev-used-{suffix}"
    subnet = f"10.{200 + int(suffix[:2], 16) % 50}.{int(suffix[2:4], 16)}.0/24"
    engine.docker("network", "create", "--internal", "--subnet", subnet, name)
    yield name
    engine.docker("network", "rm", name, check=False)


def test_a_networks_containers_against_the_cli(engine: Engine, view: Mount, network: str) -> None:
    running = run_on(engine, network, IMAGE, "sleep", "1d")
    stopped = lines(engine.docker("create", "--network", network, IMAGE, "true")).pop()
    engine.started.append(stopped)
    top = view.path / "networks"
    nid = engine.api(f"/networks/{network}")["Id"]
    assert top / network in {top / n for n in os.listdir(top)}
    expected = ps_all(engine, f"network={network}")
    assert expected == {running, stopped}
    # A container never started has no NetworkID yet: the CLI's filter by ID
    # misses it, by name finds it; the link directory holds it either way.
    assert ps_all(engine, f"network={nid}") == {running}
    assert_links(top / network / "Containers", expected)
    # The unlisted ID link leads to the same directory.
    assert set(os.listdir(top / nid / "Containers")) == expected


def test_the_built_in_networks_list_their_containers(engine: Engine, view: Mount) -> None:
    none = engine.run(IMAGE, "sleep", "1d")
    host = run_on(engine, "host", IMAGE, "sleep", "1d")
    top = view.path / "networks"
    listed = set(os.listdir(top)) - {"clone"}
    assert {"host", "none"} <= listed
    # Every network the CLI lists by ID reaches its directory by that ID.
    ids = lines(engine.docker("network", "ls", "-q", "--no-trunc"))
    assert {os.readlink(top / nid) for nid in ids} == listed
    for name, cid in (("none", none), ("host", host)):
        expected = ps_all(engine, f"network={name}")
        assert cid in expected
        assert_links(top / name / "Containers", expected)


def test_what_each_listing_asks(engine: Engine, mount_factory: Any, volume: str) -> None:
    engine.run("-v", f"{volume}:/data", IMAGE, "sleep", "1d")
    image = image_of(engine, IMAGE)
    # Mounted after the container started: no event of it moves the counters.
    view = mount_factory(engine.host, "--view=engine")
    settled(view)

    def asked() -> dict[str, int]:
        return dict(view.stats()["requests"])

    for kind in ("images", "volumes", "networks"):
        before = asked()
        os.listdir(view.path / kind)
        after = asked()
        # A kind's listing asks that kind only, no container list.
        assert after.get(kind, 0) == before.get(kind, 0) + 1
        assert after.get("users", 0) == before.get("users", 0)
    before = asked()
    os.listdir(view.path / "images" / image / "Containers")
    os.listdir(view.path / "volumes" / volume / "UsedBy")
    after = asked()
    # Each read of a link directory: one container list, nothing else.
    assert after.get("users", 0) == before.get("users", 0) + 2
    assert {k for k in after if after[k] != before.get(k, 0)} == {"users"}
