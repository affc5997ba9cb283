"""`--view=engine` on a real mount over the private dockerd: containers/,
images/, volumes/, networks/ and projects/, each checked against the engine's
own API and the docker CLI; one list request per listing; the default view
and `--swarm` unchanged; a walk of the whole view finishes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount
from support.private_dockerd import IMAGE
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

TOP = ["containers", "images", "volumes", "networks", "projects", "swarm"]
# The root lists the directories, then `events` (test_engine_events.py).
LISTED = [*TOP, "events"]
# A bound for a walk of a small engine: it ends a walk that blocks, it does not time one.
WALK_BOUND = 60.0


def requests(m: Mount) -> dict[str, int]:
    return dict(m.stats()["requests"])


def settled(m: Mount) -> None:
    """The engine's event stream up, so its first container listing is done
    and no longer moves the counters."""
    wait_until(lambda: all(e["events"] for e in m.stats()["engines"].values()), "event stream up")


def lines(text: str) -> set[str]:
    return {line.strip() for line in text.splitlines() if line.strip()}


def test_root_holds_the_six_directories(view: Mount) -> None:
    assert os.listdir(view.path) == LISTED
    for name in TOP:
        assert (view.path / name).is_dir()


def test_containers_is_todays_tree(engine: Engine, view: Mount, suffix: str) -> None:
    cid = engine.run(f"--name=ev-{suffix}", IMAGE, "sleep", "1d")
    top = view.path / "containers"
    assert set(os.listdir(top)) == lines(engine.docker("ps", "--no-trunc", "-q")) | {"clone"}
    assert (top / cid / "ID").read_text() == cid + "\n"
    # Names are unlisted links, as in the default view.
    assert f"ev-{suffix}" not in os.listdir(top)
    assert os.readlink(top / f"ev-{suffix}") == cid
    assert (top / f"ev-{suffix}" / "Names" / "0").read_text() == f"/ev-{suffix}\n"


def test_images_against_the_cli_and_the_api(engine: Engine, view: Mount) -> None:
    images = view.path / "images"
    ids = {i.removeprefix("sha256:") for i in lines(engine.docker("images", "--no-trunc", "-q"))}
    assert ids and set(os.listdir(images)) == ids | {"clone"}
    for answer in engine.api("/images/json"):
        d = images / answer["Id"].removeprefix("sha256:")
        assert (d / "ID").read_text() == answer["Id"] + "\n"
        assert (d / "Created").read_text() == f"{answer['Created']}\n"
        assert (d / "Size").read_text() == f"{answer['Size']}\n"
        tags = [t for t in answer.get("RepoTags") or () if t != "<none>:<none>"]
        assert [(d / "RepoTags" / str(n)).read_text() for n in range(len(tags))] == [
            t + "\n" for t in tags
        ]
        assert sorted(os.listdir(d / "Labels")) == sorted(answer.get("Labels") or {})
        inspected = json.loads((d / "inspect.json").read_text())
        assert inspected["Id"] == answer["Id"]


def test_a_tag_is_an_unlisted_link_to_its_image(engine: Engine, view: Mount) -> None:
    images = view.path / "images"
    image_id = engine.api(f"/images/{IMAGE}/json")["Id"].removeprefix("sha256:")
    assert IMAGE not in os.listdir(images)
    assert os.readlink(images / IMAGE) == image_id
    assert (images / IMAGE / "RepoTags" / "0").read_text().strip() in engine.api(
        f"/images/{IMAGE}/json"
    )["RepoTags"]
    assert not (images / "no-such-image:latest").exists()


def test_one_list_request_per_listing(view: Mount) -> None:
    settled(view)
    before = requests(view)
    for kind in ("images", "volumes", "networks", "projects"):
        os.listdir(view.path / kind)
        os.listdir(view.path / kind)
    after = requests(view)
    for kind in ("images", "volumes", "networks", "projects"):
        assert after.get(kind, 0) == before.get(kind, 0) + 2, kind
    # The engine view's other lists ask nobody for containers.
    assert after.get("containers/json", 0) == before.get("containers/json", 0)


@pytest.fixture
def volumes(engine: Engine, suffix: str) -> Iterator[tuple[str, str]]:
    plain, labelled = f"ev-plain-{suffix}", f"ev-lab-{suffix}"
    engine.docker("volume", "create", plain)
    engine.docker("volume", "create", "--label", "tier=db", "--opt", "type=tmpfs",
                  "--opt", "device=tmpfs", labelled)  # fmt: skip
    yield plain, labelled
    engine.docker("volume", "rm", "-f", plain, labelled, check=False)


def test_volumes_against_the_cli(engine: Engine, view: Mount, volumes: tuple[str, str]) -> None:
    plain, labelled = volumes
    top = view.path / "volumes"
    assert set(os.listdir(top)) == lines(engine.docker("volume", "ls", "-q")) | {"clone"}
    for name in volumes:
        answer = engine.api(f"/volumes/{name}")
        d = top / name
        assert (d / "Driver").read_text() == answer["Driver"] + "\n"
        assert (d / "Mountpoint").read_text() == answer["Mountpoint"] + "\n"
        assert (d / "Scope").read_text() == answer["Scope"] + "\n"
        assert json.loads((d / "inspect.json").read_text())["Name"] == name
    assert (top / labelled / "Labels" / "tier").read_text() == "db\n"
    assert (top / labelled / "Options" / "type").read_text() == "tmpfs\n"
    assert os.listdir(top / plain / "Labels") == []
    engine.docker("volume", "rm", plain)
    assert plain not in os.listdir(top)


@pytest.fixture
def network(engine: Engine, suffix: str) -> Iterator[tuple[str, str]]:
    name = f"ev-net-{suffix}"
    subnet = f"10.{200 + int(suffix[:2], 16) % 50}.{int(suffix[2:4], 16)}.0/24"
    engine.docker("network", "create", "--internal", "--subnet", subnet,
                  "--label", "env=test", name)  # fmt: skip
    yield name, subnet
    engine.docker("network", "rm", name, check=False)


def test_networks_against_the_cli(engine: Engine, view: Mount, network: tuple[str, str]) -> None:
    name, subnet = network
    top = view.path / "networks"
    listed = set(os.listdir(top))
    assert listed == lines(engine.docker("network", "ls", "--format", "{{.Name}}")) | {"clone"}
    assert {"host", "none"} <= listed  # the built-in ones, as the engine lists them
    answer = engine.api(f"/networks/{name}")
    d = top / name
    assert (d / "ID").read_text() == answer["Id"] + "\n"
    assert (d / "Driver").read_text() == "bridge\n"
    assert (d / "Scope").read_text() == "local\n"
    assert (d / "Internal").read_text() == "true\n"
    assert (d / "Subnets" / "0").read_text() == subnet + "\n"
    assert (d / "Labels" / "env").read_text() == "test\n"
    assert json.loads((d / "inspect.json").read_text())["Id"] == answer["Id"]
    # Its ID is an unlisted link to it.
    assert os.readlink(top / answer["Id"]) == name


def test_compose_projects_link_to_containers(engine: Engine, view: Mount, suffix: str) -> None:
    project = f"shop{suffix}"
    labels = [
        "-l", f"com.docker.compose.project={project}",
        "-l", "com.docker.compose.project.working_dir=/srv/shop",
        "-l", "com.docker.compose.project.config_files=/srv/shop/compose.yaml",
    ]  # fmt: skip
    members = {
        ("web", "1"): engine.run(*labels, "-l", "com.docker.compose.service=web",
                                 "-l", "com.docker.compose.container-number=1",
                                 IMAGE, "sleep", "1d"),
        ("web", "2"): engine.run(*labels, "-l", "com.docker.compose.service=web",
                                 "-l", "com.docker.compose.container-number=2",
                                 IMAGE, "sleep", "1d"),
        ("db", "1"): engine.run(*labels, "-l", "com.docker.compose.service=db",
                                "-l", "com.docker.compose.container-number=1",
                                IMAGE, "sleep", "1d"),
    }  # fmt: skip
    engine.docker("stop", "-t", "0", members["db", "1"])
    top = view.path / "projects"
    assert project in os.listdir(top)
    d = top / project
    assert (d / "WorkingDir").read_text() == "/srv/shop\n"
    assert (d / "ConfigFiles").read_text() == "/srv/shop/compose.yaml\n"
    assert os.listdir(d / "services") == ["db", "web"]
    assert os.listdir(d / "services" / "web") == ["1", "2"]
    for (service, number), cid in members.items():
        link = d / "services" / service / number
        assert os.readlink(link) == f"../../../../containers/{cid}"
        # A stopped one resolves too: containers/ reaches it by ID, unlisted.
        assert (link / "ID").read_text() == cid + "\n"


def test_a_walk_of_the_whole_view_finishes(
    engine: Engine, view: Mount, volumes: tuple[str, str], network: tuple[str, str]
) -> None:
    engine.run(IMAGE, "sleep", "1d")
    settled(view)
    before = requests(view)
    found = subprocess.run(
        ["find", str(view.path)], capture_output=True, timeout=WALK_BOUND, check=True
    )
    paths = set(found.stdout.decode().splitlines())
    assert str(view.path / "volumes" / volumes[1] / "Labels" / "tier") in paths
    assert str(view.path / "networks" / network[0] / "Subnets" / "0") in paths
    after = requests(view)
    # find opens no file: no inspect, logs, stats or archive was asked for.
    asked = {k for k in after if after[k] != before.get(k, 0)}
    lists = {"containers/json", "containers/json?filters", "images", "volumes", "networks"}
    lists |= {"users"}  # each Containers/ or UsedBy/ read lists every container
    lists |= {"services", "nodes", "tasks"}  # swarm/, refused by an engine in no swarm
    assert asked <= {*lists, "projects"}, asked


def _root(m: Mount) -> list[str]:
    return sorted(os.listdir(m.path))


def test_the_default_view_is_unchanged(engine: Engine, mount_factory: Any) -> None:
    cid = engine.run(IMAGE, "sleep", "1d")
    default = mount_factory(engine.host, name="default")
    named = mount_factory(engine.host, "--view=containers", name="named")
    by_o = mount_factory(engine.host, "-o", "view=containers", name="by-o")
    running = sorted(lines(engine.docker("ps", "--no-trunc", "-q")))
    assert cid in running
    assert _root(default) == _root(named) == _root(by_o) == running


def test_swarm_is_the_view_of_that_name(engine: Engine, mount_factory: Any) -> None:
    alias = mount_factory(engine.host, "--swarm", name="alias")
    view = mount_factory(engine.host, "--view=swarm", name="view")
    assert os.listdir(alias.path) == os.listdir(view.path) == ["services", "nodes", "tasks"]


def test_o_view_engine(engine: Engine, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "-o", "view=engine", name="o")
    assert os.listdir(m.path) == LISTED
    assert isinstance(Path(m.path / "images").stat().st_mode, int)


def test_a_new_tag_is_found_by_name_before_any_listing(
    engine: Engine, view: Mount, suffix: str
) -> None:
    images = view.path / "images"
    os.listdir(images)
    tag = f"ev-tag-{suffix}:1"
    engine.docker("tag", IMAGE, tag)
    try:
        image_id = engine.api(f"/images/{tag}/json")["Id"].removeprefix("sha256:")
        assert os.readlink(images / tag) == image_id
        assert tag + "\n" in {p.read_text() for p in (images / tag / "RepoTags").iterdir()}
    finally:
        engine.docker("rmi", tag)
    # Gone at the next listing, link and file alike (the kernel drops a
    # looked-up link once told, or when its second of trust is up).
    os.listdir(images)
    wait_until(lambda: not os.path.lexists(images / tag), f"images/{tag} gone")
    assert tag + "\n" not in {p.read_text() for p in (images / image_id / "RepoTags").iterdir()}


def test_each_engine_holds_the_view(engine: Engine, mount_factory: Any) -> None:
    cid = engine.run(IMAGE, "sleep", "1d")
    m = mount_factory(f"one={engine.host}", "-H", f"two={engine.host}", "--view=engine")
    assert os.listdir(m.path) == ["one", "two"]
    for name in ("one", "two"):
        assert os.listdir(m.path / name) == LISTED
        assert cid in os.listdir(m.path / name / "containers")
        image_id = engine.api(f"/images/{IMAGE}/json")["Id"].removeprefix("sha256:")
        assert os.readlink(m.path / name / "images" / IMAGE) == image_id
    stats = m.stats()["engines"]
    assert stats["one"]["requests"].get("images") == 1
    assert stats["two"]["requests"].get("images") == 1
