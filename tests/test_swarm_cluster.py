"""Swarm's API calls and ctl commands against a real 3-node swarm (the private
swarm fixture): the tree built from live answers agrees with the docker CLI,
and each command does what it says on the cluster. No mount yet: the calls are
made through docker_swarm, as the filesystem will make them."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import pytest
import trio
from support.private_swarm import CONVERGE_TIMEOUT, IMAGE, NetnsDockerd, PrivateSwarm
from support.waiting import wait_until

from dockerfs_fuse.docker import swarm as api
from dockerfs_fuse.docker.errors import Conflict, NotFound, NotManager
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.containers import Link
from dockerfs_fuse.model.swarm import Tree, swarm_spec
from dockerfs_fuse.model.swarm_ctl import (
    BadCommand,
    parse_node_command,
    parse_service_command,
)

pytestmark = pytest.mark.docker

T = TypeVar("T")
SLEEP = ["sleep", "1d"]


def call(
    swarm: PrivateSwarm,
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    node: NetnsDockerd | None = None,
) -> T:
    """One docker_swarm call, through the API of `node` (the manager by default)."""
    source = DockerSource((node or swarm.manager).host, timeout=30)
    source.start()
    try:
        return trio.run(fn, source, *args)
    finally:
        source.close()


def service_ctl(swarm: PrivateSwarm, name: str, text: str, **kw: Any) -> None:
    call(swarm, api.control_service, name, parse_service_command(text.encode()), **kw)


def node_ctl(swarm: PrivateSwarm, name: str, text: str, **kw: Any) -> None:
    call(swarm, api.control_node, name, parse_node_command(text.encode()), **kw)


def tasks_of(swarm: PrivateSwarm, service: str) -> list[dict[str, Any]]:
    return call(swarm, api.list_tasks, service)


def running(swarm: PrivateSwarm, service: str) -> list[dict[str, Any]]:
    """Tasks that run and are meant to."""
    return [
        t
        for t in tasks_of(swarm, service)
        if t["DesiredState"] == "running" and t["Status"]["State"] == "running"
    ]


def hostnames(swarm: PrivateSwarm, tasks: list[dict[str, Any]]) -> list[str]:
    by_id = {n["ID"]: n["Description"]["Hostname"] for n in swarm.node_list()}
    return sorted(by_id[t["NodeID"]] for t in tasks)


def live_tree(swarm: PrivateSwarm) -> Tree:
    async def fetch(source: DockerSource) -> Tree:
        return swarm_spec(
            await api.list_services(source),
            await api.list_tasks(source),
            await api.list_nodes(source),
        )

    return call(swarm, fetch)


def text(value: object) -> str:
    assert isinstance(value, bytes) and value.endswith(b"\n"), value
    return value[:-1].decode()


def sub(tree: Tree, *path: str) -> Tree:
    for name in path:
        value = tree[name]
        assert isinstance(value, Mapping), (name, value)
        tree = value
    return tree


def cli_json(node: NetnsDockerd, *argv: str) -> list[dict[str, str]]:
    out = node.docker(*argv, "--format={{json .}}").stdout.decode()
    return [json.loads(line) for line in out.splitlines()]


def start_service(swarm: PrivateSwarm, name: str, *args: str, replicas: int = 1) -> None:
    swarm.create_service(name, f"--replicas={replicas}", *args, command=SLEEP)
    wait_until(
        lambda: len(running(swarm, name)) == replicas, f"{replicas} {name} tasks", CONVERGE_TIMEOUT
    )


# -- the cluster, and the tree from its answers ------------------------------------------


def test_every_node_is_ready_with_its_own_hostname_and_address(swarm: PrivateSwarm) -> None:
    nodes = sub(live_tree(swarm), "nodes")
    assert sorted(nodes) == [n.hostname for n in swarm.nodes]
    for n in swarm.nodes:
        d = sub(nodes, n.hostname)
        assert text(d["State"]) == "ready"
        assert text(d["Addr"]) == n.addr
        assert text(d["Role"]) == ("manager" if n is swarm.manager else "worker")
    assert text(sub(nodes, swarm.manager.hostname)["Leader"]) == "true"
    local = call(swarm, api.local_node)
    assert (local["LocalNodeState"], local["ControlAvailable"]) == ("active", True)


def test_live_tree_agrees_with_docker_service_ls_ps_and_node_ls(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web", "--label=com.example/tier=front", replicas=4)
    swarm.create_service("ticker", "--mode=global", command=SLEEP)
    wait_until(
        lambda: len(running(swarm, "ticker")) == len(swarm.nodes),
        "ticker on every node",
        CONVERGE_TIMEOUT,
    )
    m = swarm.manager
    tree = live_tree(swarm)
    services = sub(tree, "services")
    for row in cli_json(m, "service", "ls"):
        d = sub(services, row["Name"])
        assert text(d["ID"]).startswith(row["ID"])
        assert text(d["Image"]) == row["Image"] == IMAGE
        assert text(d["Mode"]) == row["Mode"]
        assert f"{text(d['Running'])}/" in row["Replicas"]
    assert text(sub(services, "web")["Replicas"]) == "4"
    assert sub(services, "web", "Labels") == {"com.example%2Ftier": b"front\n"}
    for row in cli_json(m, "node", "ls"):
        d = sub(tree, "nodes", row["Hostname"])
        assert text(d["ID"]) == row["ID"]
        assert text(d["Availability"]) == row["Availability"].lower()
    ps = cli_json(m, "service", "ps", "--no-trunc", "web", "ticker")
    links = {
        link.target.rsplit("/", 1)[1]: (svc, key)
        for svc in ("web", "ticker")
        for key, link in sub(services, svc, "tasks").items()
        if isinstance(link, Link)
    }
    assert {row["ID"] for row in ps} == set(links)  # no history yet: one task per slot
    for row in ps:
        svc, key = links[row["ID"]]
        task = sub(tree, "tasks", row["ID"])
        assert text(task["Service"]) == svc
        assert text(task["Node"]) == row["Node"]
        assert key == (row["Node"] if svc == "ticker" else row["Name"].split(".")[1])
        assert text(task["State"]) == "running"
        assert len(text(task["ContainerID"])) == 64


# -- services/<name>/ctl ------------------------------------------------------------------


def test_scale_up_spreads_tasks_over_every_node_and_down_removes_them(
    swarm: PrivateSwarm,
) -> None:
    start_service(swarm, "web")
    service_ctl(swarm, "web", "scale 6")
    # Docker has the new count as soon as the command returns...
    spec = call(swarm, api.inspect_service, "web")["Spec"]
    assert spec["Mode"]["Replicated"]["Replicas"] == 6
    # ...and the tasks follow, spread over the nodes.
    tasks = wait_until(
        lambda: (r := running(swarm, "web")) and len(r) == 6 and r, "6 running", CONVERGE_TIMEOUT
    )
    assert set(hostnames(swarm, tasks)) == {n.hostname for n in swarm.nodes}
    service_ctl(swarm, "web", "scale 1")
    wait_until(lambda: len(running(swarm, "web")) == 1, "1 running", CONVERGE_TIMEOUT)
    tree = wait_until(
        lambda: (t := live_tree(swarm)) and len(sub(t, "services", "web", "tasks")) == 1 and t,
        "the removed slots gone from tasks/",
        CONVERGE_TIMEOUT,
    )
    assert text(sub(tree, "services", "web")["Replicas"]) == "1"
    service_ctl(swarm, "web", "scale 0")
    wait_until(lambda: not running(swarm, "web"), "none running", CONVERGE_TIMEOUT)


def test_image_update_then_rollback(swarm: PrivateSwarm) -> None:
    swarm.tag_image("busybox:v2")
    # All tasks at once, and 1 s (not 5 s) of watching the new tasks before "completed".
    start_service(
        swarm,
        "web",
        "--update-parallelism=0",
        "--update-monitor=1s",
        "--rollback-parallelism=0",
        "--rollback-monitor=1s",
        replicas=2,
    )

    def settled(state: str, image: str) -> bool:
        s = call(swarm, api.inspect_service, "web")
        tasks = running(swarm, "web")
        return (
            (s.get("UpdateStatus") or {}).get("State") == state
            and len(tasks) == 2
            and all(t["Spec"]["ContainerSpec"]["Image"] == image for t in tasks)
        )

    before = {t["ID"] for t in running(swarm, "web")}
    service_ctl(swarm, "web", "image busybox:v2")
    assert call(swarm, api.inspect_service, "web")["Spec"]["TaskTemplate"]["ContainerSpec"][
        "Image"
    ] == ("busybox:v2")
    wait_until(lambda: settled("completed", "busybox:v2"), "the update", CONVERGE_TIMEOUT)
    assert before.isdisjoint(t["ID"] for t in running(swarm, "web"))
    service_ctl(swarm, "web", "rollback")
    wait_until(lambda: settled("rollback_completed", IMAGE), "the rollback", CONVERGE_TIMEOUT)
    tree = live_tree(swarm)
    assert text(sub(tree, "services", "web")["Image"]) == IMAGE
    assert text(sub(tree, "services", "web", "UpdateStatus")["State"]) == "rollback_completed"


def test_restart_replaces_every_task(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web", "--update-parallelism=0", replicas=2)
    before = {t["ID"] for t in running(swarm, "web")}
    service_ctl(swarm, "web", "restart")
    assert call(swarm, api.inspect_service, "web")["Spec"]["TaskTemplate"]["ForceUpdate"] == 1
    wait_until(
        lambda: (ids := {t["ID"] for t in running(swarm, "web")}) and len(ids) == 2
        and ids.isdisjoint(before),
        "two new tasks", CONVERGE_TIMEOUT,
    )  # fmt: skip


def test_rm_removes_the_service(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web")
    service_ctl(swarm, "web", "rm")
    assert "web" not in sub(live_tree(swarm), "services")
    with pytest.raises(NotFound):
        call(swarm, api.inspect_service, "web")


def test_service_errors_are_told_apart(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web")
    with pytest.raises(NotFound):
        service_ctl(swarm, "nosuch", "scale 2")
    with pytest.raises(NotFound):
        service_ctl(swarm, "nosuch", "rm")
    for weird in ("../web", "web?x=1", "", "-web"):
        with pytest.raises(NotFound):
            call(swarm, api.inspect_service, weird)
    with pytest.raises(Conflict, match="previous spec"):
        service_ctl(swarm, "web", "rollback")  # never updated
    swarm.create_service("ticker", "--mode=global", command=SLEEP)
    with pytest.raises(BadCommand):
        service_ctl(swarm, "ticker", "scale 2")


# -- nodes/<name>/ctl ---------------------------------------------------------------------


def test_drain_moves_tasks_off_a_node_and_active_lets_them_back(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web", replicas=6)
    drained = swarm.workers[0].hostname
    assert drained in hostnames(swarm, running(swarm, "web"))
    node_ctl(swarm, drained, "drain")
    assert call(swarm, api.inspect_node, drained)["Spec"]["Availability"] == "drain"
    tasks = wait_until(
        lambda: (r := running(swarm, "web")) and len(r) == 6
        and drained not in hostnames(swarm, r) and r,
        f"no task on {drained}", CONVERGE_TIMEOUT,
    )  # fmt: skip
    assert len(set(hostnames(swarm, tasks))) == len(swarm.nodes) - 1
    node_ctl(swarm, drained, "active")
    d = sub(live_tree(swarm), "nodes", drained)
    assert text(d["Availability"]) == "active"


def test_pause_promote_demote(swarm: PrivateSwarm) -> None:
    name = swarm.workers[-1].hostname
    node_ctl(swarm, name, "pause")
    assert text(sub(live_tree(swarm), "nodes", name)["Availability"]) == "pause"
    node_ctl(swarm, name, "promote")
    d = wait_until(
        lambda: (n := call(swarm, api.inspect_node, name)).get("ManagerStatus", {})
        .get("Reachability") == "reachable" and n,
        f"{name} a reachable manager", CONVERGE_TIMEOUT,
    )  # fmt: skip
    assert d["Spec"]["Role"] == "manager"
    tree = sub(live_tree(swarm), "nodes", name)
    assert (text(tree["Role"]), text(tree["Leader"])) == ("manager", "false")
    node_ctl(swarm, name, "demote")
    wait_until(
        lambda: "ManagerStatus" not in call(swarm, api.inspect_node, name),
        f"{name} a worker",
        CONVERGE_TIMEOUT,
    )
    assert "Leader" not in sub(live_tree(swarm), "nodes", name)


def test_node_errors_are_conflicts(swarm: PrivateSwarm) -> None:
    with pytest.raises(Conflict, match="last manager"):
        node_ctl(swarm, swarm.manager.hostname, "demote")
    with pytest.raises(Conflict, match="not down"):
        node_ctl(swarm, swarm.workers[0].hostname, "rm")
    with pytest.raises(Conflict, match="manager"):
        node_ctl(swarm, swarm.manager.hostname, "rm")
    with pytest.raises(NotFound):
        node_ctl(swarm, "nosuch", "drain")


def test_rm_removes_a_node_that_left(swarm: PrivateSwarm) -> None:
    leaver = swarm.workers[-1]
    old_id = call(swarm, api.inspect_node, leaver.hostname)["ID"]
    leaver.docker("swarm", "leave")
    try:
        wait_until(
            lambda: call(swarm, api.inspect_node, old_id)["Status"]["State"] == "down",
            f"{leaver.hostname} down",
            CONVERGE_TIMEOUT,
        )
        node_ctl(swarm, old_id, "rm")
        with pytest.raises(NotFound):
            call(swarm, api.inspect_node, old_id)
        assert leaver.hostname not in sub(live_tree(swarm), "nodes")
    finally:
        swarm.join(leaver)
        swarm.wait_ready()
    assert leaver.hostname in sub(live_tree(swarm), "nodes")


# -- a worker's API ---------------------------------------------------------------------------


def test_a_workers_api_refuses_cluster_reads_and_writes(swarm: PrivateSwarm) -> None:
    start_service(swarm, "web")
    worker = swarm.workers[0]
    local = call(swarm, api.local_node, node=worker)
    assert (local["LocalNodeState"], local["ControlAvailable"]) == ("active", False)
    for attempt in (
        lambda: service_ctl(swarm, "web", "scale 3", node=worker),
        lambda: service_ctl(swarm, "web", "rm", node=worker),
        lambda: node_ctl(swarm, worker.hostname, "drain", node=worker),
        lambda: call(swarm, api.list_services, node=worker),
    ):
        with pytest.raises(NotManager, match="not a swarm manager"):
            attempt()
    # Nothing changed.
    s = call(swarm, api.inspect_service, "web")
    assert s["Spec"]["Mode"]["Replicated"]["Replicas"] == 1
