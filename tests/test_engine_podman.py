"""`--view=engine` over Podman's compatible API (the private `podman system
service`): the views it shares with Docker (images, volumes, networks,
projects, their cross links, history.json) checked against its own API and
the docker CLI driving it; swarm/, which Podman has no API for, lists
nothing. The differences found are in docs/engine.md."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount
from test_engine_links import assert_links, ps_all
from test_engine_view import lines

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"
# What Podman calls the image the fixture imports as IMG.
PODMAN_IMG = "localhost/busybox:latest"


@pytest.fixture
def view(podman_engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(podman_engine.host, "--view=engine", name="podman")
    return m


def test_images_and_their_links(podman_engine: Engine, view: Mount) -> None:
    e = podman_engine
    cid = e.run(IMG, "sleep", "1d")
    images = view.path / "images"
    ids = {i.removeprefix("sha256:") for i in lines(e.docker("images", "--no-trunc", "-q"))}
    assert ids and set(os.listdir(images)) == ids | {"clone"}
    answer = next(i for i in e.api("/images/json") if PODMAN_IMG in (i.get("RepoTags") or ()))
    image = answer["Id"].removeprefix("sha256:")
    d = images / image
    assert (d / "ID").read_text() == answer["Id"] + "\n"
    assert (d / "RepoTags" / "0").read_text() == PODMAN_IMG + "\n"
    assert (d / "Size").read_text() == f"{answer['Size']}\n"
    # The tag, escaped as a label key is, is an unlisted link.
    assert os.readlink(images / "localhost%2Fbusybox:latest") == image
    assert json.loads((d / "history.json").read_text()) == e.api(f"/images/{image}/history")
    assert json.loads((d / "inspect.json").read_text())["Id"] == answer["Id"]
    assert cid in os.listdir(d / "Containers")
    assert_links(d / "Containers", ps_all(e, f"ancestor={image}"))


def test_volumes_and_their_users(podman_engine: Engine, view: Mount) -> None:
    e = podman_engine
    name = f"pv-{uuid.uuid4().hex[:8]}"
    e.docker("volume", "create", "--label", "tier=db", name)
    try:
        cid = e.run("-v", f"{name}:/data", IMG, "sleep", "1d")
        top = view.path / "volumes"
        assert set(os.listdir(top)) == lines(e.docker("volume", "ls", "-q")) | {"clone"}
        answer = e.api(f"/volumes/{name}")
        assert (top / name / "Driver").read_text() == answer["Driver"] + "\n"
        assert (top / name / "Mountpoint").read_text() == answer["Mountpoint"] + "\n"
        assert (top / name / "Labels" / "tier").read_text() == "db\n"
        assert ps_all(e, f"volume={name}") == {cid}
        assert_links(top / name / "UsedBy", {cid})
        e.docker("rm", "-f", cid)
    finally:
        e.docker("volume", "rm", "-f", name, check=False)


def test_networks_as_podman_lists_them(podman_engine: Engine, view: Mount) -> None:
    e = podman_engine
    top = view.path / "networks"
    listed = set(os.listdir(top)) - {"clone"}
    assert listed == lines(e.docker("network", "ls", "--format", "{{.Name}}"))
    # Podman's default network goes by Docker's name; it has no host or none.
    assert "bridge" in listed and not {"host", "none"} & listed
    answer = e.api("/networks/bridge")
    assert (top / "bridge" / "ID").read_text() == answer["Id"] + "\n"
    assert lines(e.docker("network", "ls", "-q", "--no-trunc")) == {answer["Id"]}
    assert os.readlink(top / answer["Id"]) == "bridge"
    # The fixture's containers have no network (--network none): Podman
    # lists no network for them, so nothing links to bridge.
    cid = e.run(IMG, "sleep", "1d")
    assert ps_all(e, "network=bridge") == set()
    assert cid not in os.listdir(top / "bridge" / "Containers")


def test_projects(podman_engine: Engine, view: Mount) -> None:
    e = podman_engine
    project = f"pp{uuid.uuid4().hex[:8]}"
    labels = ["-l", f"com.docker.compose.project={project}", "-l", "com.docker.compose.service=web"]
    one = e.run(*labels, "-l", "com.docker.compose.container-number=1", IMG, "sleep", "1d")
    d = view.path / "projects" / project
    assert project in os.listdir(view.path / "projects")
    assert os.listdir(d / "services" / "web") == ["1"]
    assert os.readlink(d / "services" / "web" / "1") == f"../../../../containers/{one}"
    assert (d / "services" / "web" / "1" / "ID").read_text() == one + "\n"


def test_swarm_lists_nothing(view: Mount) -> None:
    s = Path(view.path) / "swarm"
    for kind in ("services", "nodes", "tasks"):
        assert os.listdir(s / kind) == []
    assert "readdir" not in view.log_text()
