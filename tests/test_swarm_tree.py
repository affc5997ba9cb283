"""The Swarm tree contract, checked against answers recorded from a real 3-node swarm
(tests/record_swarm.py made them) and against what the docker CLI printed for the
same state."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.model.containers import (
    LIVE,
    Link,
    Special,
    Unlisted,
    container_spec,
    escape_name,
)
from dockerfs_fuse.model.swarm import (
    NODE_ORDER,
    SERVICE_ORDER,
    TASK_ORDER,
    Tree,
    current_tasks,
    node_aliases,
    node_names,
    node_spec,
    service_aliases,
    service_spec,
    swarm_spec,
    task_spec,
    unix_seconds,
)

DATA = Path(__file__).parent / "data"


def load(name: str) -> Any:
    return json.loads((DATA / f"swarm-{name}.json").read_text())


SERVICES: list[dict[str, Any]] = load("services")
TASKS: list[dict[str, Any]] = load("tasks")
NODES: list[dict[str, Any]] = load("nodes")
CLI: dict[str, list[dict[str, str]]] = load("cli")


def service(name: str) -> dict[str, Any]:
    return next(copy.deepcopy(s) for s in SERVICES if s["Spec"]["Name"] == name)


def node(hostname: str) -> dict[str, Any]:
    return next(copy.deepcopy(n) for n in NODES if n["Description"]["Hostname"] == hostname)


def text(value: object) -> str:
    """A file's content without its newline; fails on anything but a file."""
    assert isinstance(value, bytes) and value.endswith(b"\n"), value
    return value[:-1].decode()


def sub(tree: Tree, *path: str) -> Tree:
    for name in path:
        value = tree[name]
        assert isinstance(value, Mapping), (name, value)
        tree = value
    return tree


TREE = swarm_spec(SERVICES, TASKS, NODES)


# -- the whole tree against the docker CLI's view of the same state ---------------------


def test_top_level_is_services_nodes_tasks() -> None:
    assert list(TREE) == ["services", "nodes", "tasks"]
    assert sorted(sub(TREE, "services")) == sorted(s["Name"] for s in CLI["service ls"])
    assert sorted(sub(TREE, "nodes")) == sorted(n["Hostname"] for n in CLI["node ls"])
    assert sorted(sub(TREE, "tasks")) == sorted(t["ID"] for t in TASKS)
    assert {t["ID"] for t in CLI["service ps --no-trunc"]} == set(sub(TREE, "tasks"))


@pytest.mark.parametrize("row", CLI["service ls"], ids=lambda r: r["Name"])
def test_services_match_docker_service_ls(row: dict[str, str]) -> None:
    d = sub(TREE, "services", row["Name"])
    assert text(d["ID"]).startswith(row["ID"])
    assert text(d["Name"]) == row["Name"]
    assert text(d["Image"]) == row["Image"]
    assert text(d["Mode"]) == row["Mode"]
    running, desired = row["Replicas"].split("/")
    assert text(d["Running"]) == running
    if row["Mode"] == "replicated":
        assert text(d["Replicas"]) == desired
    else:
        assert "Replicas" not in d  # a global service has no replica count
    ports = sub(d, "Ports")
    if row["Ports"]:  # e.g. "*:8081->80/tcp"
        published, rest = row["Ports"].removeprefix("*:").split("->")
        target, proto = rest.split("/")
        assert text(sub(ports, "0")["PublishedPort"]) == published
        assert text(sub(ports, "0")["TargetPort"]) == target
        assert text(sub(ports, "0")["Protocol"]) == proto
        assert text(sub(ports, "0")["PublishMode"]) == "ingress"
    else:
        assert ports == {}


@pytest.mark.parametrize("row", CLI["node ls"], ids=lambda r: r["Hostname"])
def test_nodes_match_docker_node_ls(row: dict[str, str]) -> None:
    d = sub(TREE, "nodes", row["Hostname"])
    assert text(d["ID"]) == row["ID"]
    assert text(d["Hostname"]) == row["Hostname"]
    assert text(d["State"]) == row["Status"].lower()
    assert text(d["Availability"]) == row["Availability"].lower()
    assert text(d["EngineVersion"]) == row["EngineVersion"]
    # node ls shows Leader/Reachable for managers and nothing for workers.
    assert text(d["Role"]) == ("manager" if row["ManagerStatus"] else "worker")
    if row["ManagerStatus"]:
        assert text(d["Leader"]) == ("true" if row["ManagerStatus"] == "Leader" else "false")
    else:
        assert "Leader" not in d


def test_service_tasks_link_the_current_task_of_each_slot_as_service_ps_lists_it() -> None:
    """`docker service ps` lists each slot's (or node's) current task first, then its
    history; tasks/<slot or node> links that first one."""
    first: dict[tuple[str, str], str] = {}
    for row in CLI["service ps --no-trunc"]:
        svc, _, key = row["Name"].partition(".")
        if not key.isdigit():  # a global task: <service>.<node ID>; we key it by node name
            key = row["Node"]
        first.setdefault((svc, key), row["ID"])
    links = {
        (svc, key): link
        for svc, d in sub(TREE, "services").items()
        for key, link in sub(d, "tasks").items()  # type: ignore[arg-type]
    }
    assert set(links) == set(first)
    for (svc, key), task_id in first.items():
        assert links[svc, key] == Link(f"../../../tasks/{task_id}")


@pytest.mark.parametrize("row", CLI["service ps --no-trunc"], ids=lambda r: r["ID"][:6])
def test_tasks_match_docker_service_ps(row: dict[str, str]) -> None:
    d = sub(TREE, "tasks", row["ID"])
    svc, _, slot = row["Name"].partition(".")
    assert text(d["ID"]) == row["ID"]
    assert text(d["Service"]) == svc
    assert text(d["Slot"]) == (slot if slot.isdigit() else "")
    assert text(d["Node"]) == row["Node"]
    assert text(d["DesiredState"]) == row["DesiredState"].lower()
    # CurrentState is "Running 19 seconds ago": the state, then a relative time.
    assert row["CurrentState"].lower().startswith(text(d["State"]) + " ")
    assert text(d["Error"]) == row["Error"].strip('"')


# -- each directory in detail ---------------------------------------------------------


def test_service_directory_fields_and_order() -> None:
    s = service("web")
    d = service_spec(s, TASKS, node_names(NODES))
    assert tuple(d) == SERVICE_ORDER
    assert text(d["ID"]) == s["ID"]
    assert text(d["Image"]) == "busybox:v2"  # recorded after `service update --image`
    assert text(d["CreatedAt"]) == str(unix_seconds(s["CreatedAt"]))
    assert int(text(d["UpdatedAt"])) > int(text(d["CreatedAt"])) > 1_700_000_000
    assert sub(d, "Labels") == {"com.example%2Ftier": b"front\n"}
    # ctl and logs are links into the unlisted .live, which a walk never enters.
    assert (d["ctl"], d["logs"]) == (Link(f"{LIVE}/ctl"), Link(f"{LIVE}/logs"))
    assert d["inspect.json"] is Special.INSPECT
    assert isinstance(d[LIVE], Unlisted)
    assert d[LIVE] == {"ctl": Special.CTL, "logs": Special.LOGS}
    assert list(sub(d, "tasks")) == ["1", "2", "3", "4"]


def test_update_status_times_are_unix_seconds() -> None:
    s = service("web")
    status = sub(service_spec(s, TASKS, {}), "UpdateStatus")
    assert text(status["State"]) == "completed"
    assert text(status["Message"]) == s["UpdateStatus"]["Message"]
    started, completed = int(text(status["StartedAt"])), int(text(status["CompletedAt"]))
    assert started == unix_seconds(s["UpdateStatus"]["StartedAt"]) > 1_700_000_000
    assert completed >= started
    assert sub(service_spec(service("once"), TASKS, {}), "UpdateStatus") == {}


def test_global_service_tasks_are_keyed_by_node_name() -> None:
    d = service_spec(service("ticker"), TASKS, node_names(NODES))
    assert text(d["Mode"]) == "global"
    assert list(sub(d, "tasks")) == ["node1", "node2", "node3"]


def test_running_is_counted_from_tasks_without_service_status() -> None:
    s = service("web")
    listed = text(service_spec(s, TASKS, {})["Running"])
    del s["ServiceStatus"]  # GET /services without status=true
    assert text(service_spec(s, TASKS, {})["Running"]) == listed == "4"
    assert text(service_spec(s, [], {})["Running"]) == "0"


def test_node_directory_fields_and_order() -> None:
    n = node("node1")
    d = node_spec(n)
    assert tuple(d) == NODE_ORDER
    assert text(d["Role"]) == "manager"
    assert text(d["Leader"]) == "true"
    assert text(d["Addr"]) == n["Status"]["Addr"]
    assert text(d["Addr"]).startswith("10.77.0.")
    assert (d["ctl"], d["inspect.json"]) == (Link(f"{LIVE}/ctl"), Special.INSPECT)
    assert isinstance(d[LIVE], Unlisted)
    assert d[LIVE] == {"ctl": Special.CTL}
    labelled = node_spec(node("node2"))
    assert sub(labelled, "Labels") == {"zone": b"a\n", "com.example%2Frack": b"r1\n"}
    assert text(labelled["Leader"]) == "false"  # a manager, not the leader
    worker = node_spec(node("node3"))
    assert "Leader" not in worker
    assert text(worker["Availability"]) == "pause"


def test_task_directory_fields_and_order() -> None:
    failed = next(t for t in TASKS if t["Status"].get("Err", "").startswith("task: non-zero"))
    sid, nid = failed["ServiceID"], failed["NodeID"]
    d = task_spec(failed, {sid: "once"}, {nid: "nodeX"})
    assert tuple(d) == TASK_ORDER
    assert text(d["Service"]) == "once"
    assert text(d["Node"]) == "nodeX"
    assert text(d["Slot"]) == "1"
    assert text(d["State"]) == "failed"
    assert text(d["ExitCode"]) == "3"
    assert text(d["ContainerID"]) == failed["Status"]["ContainerStatus"]["ContainerID"]
    assert text(d["Timestamp"]) == str(unix_seconds(failed["Status"]["Timestamp"]))
    assert d["inspect.json"] is Special.INSPECT
    # Unknown service and node (removed since): their IDs stand in for names.
    bare = task_spec(failed, {}, {})
    assert (text(bare["Service"]), text(bare["Node"])) == (sid, nid)


def test_task_without_container_or_node_has_empty_fields() -> None:
    t = copy.deepcopy(TASKS[0])
    t["Status"] = {"Timestamp": "2026-01-01T00:00:00Z", "State": "pending", "Message": "pending"}
    t.pop("NodeID", None)
    t.pop("Slot", None)
    d = task_spec(t, {}, {})
    for field in ("Node", "Slot", "ContainerID", "ExitCode", "Error"):
        assert d[field] == b"\n", field
    assert text(d["Timestamp"]) == "1767225600"


# -- names ----------------------------------------------------------------------------


def test_nodes_are_named_by_hostname_and_aliased_by_id() -> None:
    names = node_names(NODES)
    assert sorted(names.values()) == ["node1", "node2", "node3"]
    assert node_aliases(NODES) == {n["ID"]: n["Description"]["Hostname"] for n in NODES}


def test_a_shared_hostname_names_those_nodes_by_id_and_gives_them_no_alias() -> None:
    """A machine that left and joined again is two nodes with one hostname."""
    nodes = copy.deepcopy(NODES)
    again = next(n for n in nodes if n["Description"]["Hostname"] == "node3")
    again["Description"]["Hostname"] = "node2"
    twins = {n["ID"] for n in nodes if n["Description"]["Hostname"] == "node2"}
    names = node_names(nodes)
    assert {names[i] for i in twins} == twins
    aliases = node_aliases(nodes)
    assert twins.isdisjoint(aliases) and "node2" not in aliases.values()
    tree = swarm_spec(SERVICES, TASKS, nodes)
    assert sorted(sub(tree, "nodes")) == sorted([*twins, "node1"])
    ticker = sub(tree, "services", "ticker", "tasks")
    assert sorted(ticker) == sorted([*twins, "node1"])
    on_twin = next(t for t in TASKS if t.get("NodeID") in twins)
    assert text(sub(tree, "tasks", on_twin["ID"])["Node"]) == on_twin["NodeID"]


def test_services_are_aliased_by_id() -> None:
    assert service_aliases(SERVICES) == {s["ID"]: s["Spec"]["Name"] for s in SERVICES}


def test_label_keys_are_escaped_as_in_the_core() -> None:
    s = service("web")
    s["Spec"]["Labels"] = {"a/b": "1", "..": "2", "": "3", "50%": "4"}
    labels = sub(service_spec(s, [], {}), "Labels")
    assert labels == {escape_name(k): f"{v}\n".encode() for k, v in s["Spec"]["Labels"].items()}
    assert set(labels) == {"a%2Fb", "%2E%2E", "%", "50%25"}


def test_current_task_prefers_the_one_wanted_now_over_a_newer_history_entry() -> None:
    s = service("web")
    slot1 = [t for t in TASKS if t["ServiceID"] == s["ID"] and t.get("Slot") == 1]
    assert len(slot1) == 2  # the update left the old task as history
    current = next(t for t in slot1 if t["DesiredState"] == "running")
    old = copy.deepcopy(next(t for t in slot1 if t["DesiredState"] == "shutdown"))
    old["Version"]["Index"] = current["Version"]["Index"] + 100
    chosen = current_tasks(s, [old, current], {})
    assert chosen["1"]["ID"] == current["ID"]
    # With no current task (a replica that ended), the latest history entry is shown.
    chosen = current_tasks(s, [old, {**current, "DesiredState": "shutdown"}], {})
    assert chosen["1"]["ID"] == old["ID"]


# -- values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stamp", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("2026-11-27T23:57:06.034622679Z", 1795823826),
        ("2026-11-27T23:57:06Z", 1795823826),
        ("2026-11-28T01:57:06.5+02:00", 1795823826),
        ("2026-11-27T20:57:06-03:00", 1795823826),
        ("0001-01-01T00:00:00Z", 0),  # Go's zero time: "never"
        ("yesterday", 0),
        ("", 0),
        (None, 0),
        (1795823826, 0),
    ],
)
def test_unix_seconds(stamp: Any, seconds: int) -> None:
    assert unix_seconds(stamp) == seconds


def test_every_file_holds_one_line_and_every_entry_is_a_known_kind() -> None:
    def walk(tree: Tree) -> int:
        count = 0
        for name, value in tree.items():
            assert name and "/" not in name and name not in (".", "..")
            if isinstance(value, Mapping):
                count += walk(value)
            elif isinstance(value, bytes):
                assert value.endswith(b"\n") and value.count(b"\n") == 1, (name, value)
                count += 1
            else:
                assert isinstance(value, Special | Link), (name, value)
        return count

    assert walk(TREE) > 200


def test_a_container_spec_is_a_tree() -> None:
    """Tree widens tree.Spec; a container directory needs no conversion."""
    spec: Tree = container_spec({"Id": "0" * 64})
    assert spec["ID"] == b"0" * 64 + b"\n"


def test_garbage_answers_give_empty_fields_not_errors() -> None:
    garbage: list[dict[str, Any]] = [
        {},
        {"ID": "x", "Spec": None, "Status": "?"},
        {"Spec": {"Mode": []}},
    ]
    for obj in garbage:
        service_spec(obj, [obj], {})
        node_spec(obj)
        task_spec(obj, {}, {})
    assert swarm_spec([{}], [{}], [{}]) == {"services": {}, "nodes": {}, "tasks": {}}


def test_a_slot_being_removed_is_not_listed() -> None:
    """After a scale down Docker marks the extra slots' tasks desired "remove"."""
    s = service("web")
    tasks = copy.deepcopy(TASKS)
    for t in tasks:
        if t["ServiceID"] == s["ID"] and t.get("Slot") in (3, 4):
            t["DesiredState"] = "remove"
    assert list(current_tasks(s, tasks, {})) == ["1", "2"]
    assert sorted(sub(swarm_spec(SERVICES, tasks, NODES), "tasks")) == sorted(
        t["ID"] for t in TASKS
    )
