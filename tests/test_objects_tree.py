"""The engine view's tree contract (images, volumes, networks, compose projects),
checked against answers shaped as the Engine API gives them."""

from __future__ import annotations

from typing import Any

from dockerfs_fuse.model.containers import Link, Special
from dockerfs_fuse.model.objects import (
    image_aliases,
    image_id,
    image_spec,
    network_aliases,
    network_names,
    network_spec,
    project_spec,
    projects,
    volume_name,
    volume_spec,
)

HEX = "ab" * 32
IMAGE: dict[str, Any] = {
    "Id": f"sha256:{HEX}",
    "ParentId": "",
    "RepoTags": ["busybox:latest", "localhost:5000/team/busybox:1"],
    "RepoDigests": ["busybox@sha256:" + "cd" * 32],
    "Created": 1700000000,
    "Size": 4261550,
    "Labels": {"org.opencontainers.image.title": "bb", "a/b": "slash"},
    "Containers": -1,
}


def test_an_image_is_its_id_without_the_algorithm() -> None:
    assert image_id(IMAGE) == HEX
    spec = image_spec(IMAGE)
    assert spec["ID"] == f"sha256:{HEX}\n".encode()
    assert spec["RepoTags"] == {"0": b"busybox:latest\n", "1": b"localhost:5000/team/busybox:1\n"}
    assert spec["RepoDigests"] == {"0": ("busybox@sha256:" + "cd" * 32 + "\n").encode()}
    assert spec["Created"] == b"1700000000\n"
    assert spec["Size"] == b"4261550\n"
    assert spec["Labels"] == {"org.opencontainers.image.title": b"bb\n", "a%2Fb": b"slash\n"}
    assert spec["inspect.json"] is Special.INSPECT


def test_tags_are_aliases_escaped_as_label_keys() -> None:
    assert image_aliases([IMAGE]) == {
        "busybox:latest": HEX,
        "localhost:5000%2Fteam%2Fbusybox:1": HEX,
    }


def test_a_dangling_image_has_no_tags_and_no_alias() -> None:
    for placeholder in (["<none>:<none>"], [], None):
        dangling = {**IMAGE, "RepoTags": placeholder, "RepoDigests": ["<none>@<none>"]}
        spec = image_spec(dangling)
        assert spec["RepoTags"] == {}
        assert spec["RepoDigests"] == {}
        assert image_aliases([dangling]) == {}


VOLUME: dict[str, Any] = {
    "Name": "data",
    "Driver": "local",
    "Mountpoint": "/var/lib/docker/volumes/data/_data",
    "CreatedAt": "2024-01-02T03:04:05Z",
    "Labels": {"tier": "db"},
    "Scope": "local",
    "Options": {"type": "tmpfs", "device": "tmpfs"},
}


def test_a_volume() -> None:
    assert volume_name(VOLUME) == "data"
    spec = volume_spec(VOLUME)
    assert spec["Driver"] == b"local\n"
    assert spec["Mountpoint"] == b"/var/lib/docker/volumes/data/_data\n"
    assert spec["Scope"] == b"local\n"
    assert spec["CreatedAt"] == b"1704164645\n"
    assert spec["Labels"] == {"tier": b"db\n"}
    assert spec["Options"] == {"type": b"tmpfs\n", "device": b"tmpfs\n"}
    bare = volume_spec({"Name": "x", "Labels": None, "Options": None})
    assert bare["Labels"] == {} and bare["Options"] == {} and bare["CreatedAt"] == b"0\n"


NETWORK: dict[str, Any] = {
    "Name": "backend",
    "Id": "ef" * 32,
    "Created": "2024-01-02T03:04:05.123456789+01:00",
    "Scope": "local",
    "Driver": "bridge",
    "Internal": False,
    "IPAM": {"Driver": "default", "Config": [{"Subnet": "10.9.0.0/24", "Gateway": "10.9.0.1"}]},
    "Labels": {"env": "test"},
}


def test_a_network() -> None:
    spec = network_spec(NETWORK)
    assert spec["ID"] == ("ef" * 32 + "\n").encode()
    assert spec["Driver"] == b"bridge\n"
    assert spec["Scope"] == b"local\n"
    assert spec["Internal"] == b"false\n"
    assert spec["Subnets"] == {"0": b"10.9.0.0/24\n"}
    assert spec["Labels"] == {"env": b"test\n"}
    assert network_spec({**NETWORK, "IPAM": {"Config": None}})["Subnets"] == {}


def test_networks_by_name_unless_two_share_it() -> None:
    twin = {**NETWORK, "Id": "01" * 32}
    other = {**NETWORK, "Name": "host", "Id": "02" * 32}
    names = network_names([NETWORK, twin, other])
    assert names == {"ef" * 32: "ef" * 32, "01" * 32: "01" * 32, "02" * 32: "host"}
    assert network_aliases([NETWORK, twin, other]) == {"02" * 32: "host"}


def _member(cid: str, service: str, number: str, created: int) -> dict[str, Any]:
    return {
        "Id": cid,
        "Created": created,
        "Labels": {
            "com.docker.compose.project": "shop",
            "com.docker.compose.service": service,
            "com.docker.compose.container-number": number,
            "com.docker.compose.project.working_dir": "/srv/shop",
            "com.docker.compose.project.config_files": "/srv/shop/compose.yaml",
        },
    }


def test_a_compose_project() -> None:
    members = [
        _member("c" * 64, "web", "10", 3),
        _member("a" * 64, "web", "2", 1),
        _member("b" * 64, "db", "1", 2),
        {"Id": "d" * 64, "Labels": {"other": "x"}},
    ]
    found = projects(members)
    assert list(found) == ["shop"]
    spec = project_spec(found["shop"])
    assert spec["WorkingDir"] == b"/srv/shop\n"
    assert spec["ConfigFiles"] == b"/srv/shop/compose.yaml\n"
    services = spec["services"]
    assert isinstance(services, dict)
    assert list(services) == ["db", "web"]
    assert services["web"] == {
        "2": Link("../../../../containers/" + "a" * 64),
        "10": Link("../../../../containers/" + "c" * 64),
    }
    assert list(services["web"]) == ["2", "10"]
