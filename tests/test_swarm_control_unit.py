"""Service and node ctl commands and the requests they become: pure, no engine.
The objects are the recorded answers of a real swarm (tests/data/swarm-*.json)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.model.swarm_ctl import (
    MAX_REPLICAS,
    BadCommand,
    Request,
    SwarmCommand,
    node_request,
    parse_node_command,
    parse_service_command,
    service_request,
)

DATA = Path(__file__).parent / "data"
SERVICES = json.loads((DATA / "swarm-services.json").read_text())
NODES = json.loads((DATA / "swarm-nodes.json").read_text())


def service(name: str) -> dict[str, Any]:
    return next(copy.deepcopy(s) for s in SERVICES if s["Spec"]["Name"] == name)


def node(hostname: str) -> dict[str, Any]:
    return next(copy.deepcopy(n) for n in NODES if n["Description"]["Hostname"] == hostname)


@pytest.mark.parametrize(
    ("data", "want"),
    [
        (b"scale 5\n", SwarmCommand("scale", "5")),
        (b"scale 0", SwarmCommand("scale", "0")),
        (b"scale 007", SwarmCommand("scale", "7")),
        (b"image busybox:v2\n", SwarmCommand("image", "busybox:v2")),
        (b"image registry.example:5000/a/b@sha256:" + b"a" * 64, None),
        (b"rollback", SwarmCommand("rollback")),
        (b"  restart \n", SwarmCommand("restart")),
        (b"rm\n", SwarmCommand("rm")),
    ],
)
def test_service_commands(data: bytes, want: SwarmCommand | None) -> None:
    got = parse_service_command(data)
    if want is None:
        want = SwarmCommand("image", data.decode().split()[1])
    assert got == want


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b" \n",
        b"bogus",
        b"drain",  # a node's command
        b"scale",
        b"scale -1",
        b"scale 1.5",
        b"scale five",
        b"scale 1 2",
        f"scale {MAX_REPLICAS + 1}".encode(),
        b"image",
        b"image a b",
        b"image -bad",
        b"image " + b"a" * 600,
        b"image bad\x01ref",
        b"rollback now",
        b"rm -f",
        "scale \u0665".encode(),  # a digit, but not ASCII
        b"scale 3" + b" " * 300,  # every write is bounded, as ctl's are
    ],
)
def test_bad_service_commands(data: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_service_command(data)


@pytest.mark.parametrize("action", ["drain", "active", "pause", "promote", "demote", "rm"])
def test_node_commands(action: str) -> None:
    assert parse_node_command(f"{action}\n".encode()) == SwarmCommand(action)


@pytest.mark.parametrize(
    "data", [b"", b"scale 2", b"drain now", b"rm --force", b"Drain", b"\xff", b"availability"]
)
def test_bad_node_commands(data: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_node_command(data)


def update_of(s: dict[str, Any], data: bytes) -> Request:
    before = copy.deepcopy(s)
    req = service_request(s, parse_service_command(data))
    assert s == before, "the answer it was built from is left alone"
    assert req.method == "POST" and req.path == f"services/{s['ID']}/update"
    assert req.params["version"] == str(s["Version"]["Index"])
    return req


def test_scale_changes_only_the_replica_count() -> None:
    s = service("web")
    req = update_of(s, b"scale 9")
    assert req.body is not None
    assert req.body["Mode"] == {"Replicated": {"Replicas": 9}}
    assert {**req.body, "Mode": s["Spec"]["Mode"]} == s["Spec"]
    assert set(req.params) == {"version"}


def test_scale_of_a_global_service_is_refused_before_asking_docker() -> None:
    with pytest.raises(BadCommand, match="replicated"):
        service_request(service("ticker"), parse_service_command(b"scale 2"))


def test_image_changes_only_the_image() -> None:
    s = service("web")
    req = update_of(s, b"image busybox:latest")
    assert req.body is not None
    assert req.body["TaskTemplate"]["ContainerSpec"]["Image"] == "busybox:latest"
    s["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] = "busybox:latest"
    assert req.body == s["Spec"]


def test_restart_bumps_force_update() -> None:
    s = service("web")
    before = s["Spec"]["TaskTemplate"].get("ForceUpdate", 0)
    req = update_of(s, b"restart")
    assert req.body is not None
    assert req.body["TaskTemplate"]["ForceUpdate"] == before + 1
    del s["Spec"]["TaskTemplate"]["ForceUpdate"]  # an engine that leaves it out when 0
    assert update_of(s, b"restart").body["TaskTemplate"]["ForceUpdate"] == 1  # type: ignore[index]


def test_rollback_asks_the_engine_for_the_previous_spec() -> None:
    s = service("web")
    req = update_of(s, b"rollback")
    assert req.params == {"version": str(s["Version"]["Index"]), "rollback": "previous"}
    assert req.body == s["Spec"]


def test_service_rm_is_a_delete_by_id() -> None:
    s = service("web")
    assert service_request(s, SwarmCommand("rm")) == Request("DELETE", f"services/{s['ID']}")


@pytest.mark.parametrize(
    ("action", "field", "value"),
    [
        ("drain", "Availability", "drain"),
        ("active", "Availability", "active"),
        ("pause", "Availability", "pause"),
        ("promote", "Role", "manager"),
        ("demote", "Role", "worker"),
    ],
)
def test_node_updates_change_one_field(action: str, field: str, value: str) -> None:
    n = node("node3")
    before = copy.deepcopy(n)
    req = node_request(n, SwarmCommand(action))
    assert n == before
    assert (req.method, req.path) == ("POST", f"nodes/{n['ID']}/update")
    assert req.params == {"version": str(n["Version"]["Index"])}
    assert req.body == {**n["Spec"], field: value}


def test_node_rm_is_not_forced() -> None:
    n = node("node3")
    assert node_request(n, SwarmCommand("rm")) == Request("DELETE", f"nodes/{n['ID']}")


@pytest.mark.parametrize("broken", [{}, {"ID": "x"}, {"ID": "x", "Spec": {}}, {"Spec": {}}])
def test_answers_without_id_version_or_spec_are_refused(broken: dict[str, Any]) -> None:
    with pytest.raises(BadCommand):
        service_request(broken, SwarmCommand("restart"))
    with pytest.raises(BadCommand):
        node_request(broken, SwarmCommand("drain"))
