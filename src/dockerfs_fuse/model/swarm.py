"""What a Swarm cluster looks like as files: the contract of the `--swarm` tree.

Pure functions from Docker's answers to `GET /services?status=true`,
`GET /tasks` and `GET /nodes` (plain dicts) to nested mappings of names to
file contents, in the style of `tree`: no I/O, no FUSE, so the layout is
unit-tested against recorded answers.

```
/services/<name>/  ID Name Image Mode Replicas Running CreatedAt UpdatedAt
                   UpdateStatus/<Field> Labels/<key> Ports/<n>/<Field>
                   ctl logs inspect.json tasks/<slot or node> -> ../../../tasks/<id>
/nodes/<name>/     ID Hostname Role Availability State Addr EngineVersion Leader
                   Labels/<key> ctl inspect.json
/tasks/<id>/       ID Service Slot Node DesiredState State Message Error
                   ContainerID ExitCode Timestamp inspect.json
```

A service's `tasks/` entries are symbolic links (`tree.Link`) into the
cluster-wide `/tasks`, so a task has one directory however it is reached.
`ctl` and a service's `logs` are links into the unlisted `.live` directory
beside them, as a container's are (see tree.LIVE), so a recursive walk never
opens them. `Tree` is `tree.Spec` as a Mapping, so every `Spec` is a `Tree`
and tree's helpers build parts of one.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from dockerfs_fuse.model.containers import (
    LIVE,
    Link,
    Special,
    Unlisted,
    escape_name,
    live_link,
    render,
    scalar_files,
)

Obj: TypeAlias = Mapping[str, Any]

# Mapping (covariant), not dict: a tree.Spec is then a Tree, unchanged.
Tree: TypeAlias = "Mapping[str, Tree | bytes | Special | Link]"
_Dir: TypeAlias = "dict[str, Tree | bytes | Special | Link]"

TOP = ("services", "nodes", "tasks")


# -- values -----------------------------------------------------------------------


def _get(obj: Any, *path: str) -> Any:
    """obj[a][b]..., or None where any step is missing or not a mapping."""
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)")


def unix_seconds(stamp: Any) -> int:
    """Docker's RFC 3339 time (nanoseconds, Z or an offset) as whole Unix seconds.

    Anything unparsable, and Go's zero time (year 1, what Docker writes for
    "never"), is 0, so a file always holds a number. The pattern says what is
    accepted; `fromisoformat` (C, a sixth of the time of the groups and
    `timegm`) reads it: a first listing of 500 volumes reads 500 of these.
    """
    if not isinstance(stamp, str) or _RFC3339.fullmatch(stamp) is None:
        return 0
    try:
        when = datetime.datetime.fromisoformat(stamp)
    except ValueError:  # matches the pattern, yet no date (month 13)
        return 0
    return 0 if when.year <= 1 else int(when.replace(microsecond=0).timestamp())


def created_seconds(obj: Obj) -> int:
    """The object's CreatedAt: its directory's mtime, as a container's Created is."""
    return unix_seconds(obj.get("CreatedAt"))


def _labels(labels: Any) -> _Dir:
    if not isinstance(labels, Mapping):
        return {}
    return {escape_name(str(k)): render(v) for k, v in labels.items()}


# -- names ------------------------------------------------------------------------


def object_id(obj: Obj) -> str:
    return str(obj.get("ID") or "")


def service_name(service: Obj) -> str:
    """A service's directory: its name (unique in a swarm), else its ID."""
    return escape_name(str(_get(service, "Spec", "Name") or object_id(service)))


def node_names(nodes: Iterable[Obj]) -> dict[str, str]:
    """Node ID -> directory name: the hostname when no other node has it, else the ID.

    Hostnames repeat in practice: a machine that left and joined again is
    two nodes, one of them down, with one hostname.
    """
    nodes = list(nodes)
    counts: dict[str, int] = {}
    for n in nodes:
        host = str(_get(n, "Description", "Hostname") or "")
        counts[host] = counts.get(host, 0) + 1
    names: dict[str, str] = {}
    for n in nodes:
        host = str(_get(n, "Description", "Hostname") or "")
        names[object_id(n)] = escape_name(host) if host and counts[host] == 1 else object_id(n)
    return names


def node_aliases(nodes: Iterable[Obj]) -> dict[str, str]:
    """The unlisted other form of each node's name -> its listed name.

    A node listed by hostname is also reachable by ID; one listed by ID (its
    hostname is shared) has no other name, since the hostname is ambiguous.
    """
    names = node_names(nodes)
    return {nid: name for nid, name in names.items() if name != nid and nid not in names.values()}


def service_aliases(services: Iterable[Obj]) -> dict[str, str]:
    """A service's ID -> its name, like a container's name -> its ID in the core."""
    aliases: dict[str, str] = {}
    for s in services:
        name = service_name(s)
        if object_id(s) and object_id(s) != name:
            aliases[object_id(s)] = name
    return aliases


# -- tasks of a service -----------------------------------------------------------

# Desired states that mean "this is the slot's task now": the orchestrator
# marks a task's predecessors shutdown (or remove) as it replaces them.
_CURRENT = ("new", "pending", "assigned", "accepted", "preparing", "ready", "starting", "running")


def _task_order(task: Obj) -> tuple[bool, int, str]:
    """Sort key: current tasks after history, then by Docker's version, then creation."""
    version = _get(task, "Version", "Index")
    return (
        task.get("DesiredState") in _CURRENT,
        version if isinstance(version, int) else 0,
        str(task.get("CreatedAt") or ""),
    )


def current_tasks(service: Obj, tasks: Iterable[Obj], names: Mapping[str, str]) -> dict[str, Obj]:
    """A service's task per slot (replicated) or per node (global), as `docker service ps`
    shows first: the one the orchestrator wants now, else the latest of its history;
    none for a slot being removed.

    `names` maps node IDs to node directory names (see node_names); keys are
    slot numbers, or node names, in slot or name order.
    """
    sid = object_id(service)
    chosen: dict[str, Obj] = {}
    for t in tasks:
        # "remove": the slot itself is going (a scale down); its task lingers
        # in /tasks until the reaper deletes it, but the slot is no more.
        if t.get("ServiceID") != sid or t.get("DesiredState") == "remove":
            continue
        slot = t.get("Slot")
        if isinstance(slot, int) and slot > 0:
            key = str(slot)
        else:
            node = str(t.get("NodeID") or "")
            if not node:
                continue  # a global task not yet placed has no place here
            key = names.get(node, node)
        if key not in chosen or _task_order(t) > _task_order(chosen[key]):
            chosen[key] = t
    order = sorted(chosen, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    return {k: chosen[k] for k in order}


def service_mode(service: Obj) -> str:
    mode = _get(service, "Spec", "Mode")
    if isinstance(mode, Mapping) and mode:
        # "Replicated", "Global" (and the job modes of newer engines), as the CLI prints them.
        name = str(next(iter(mode)))
        return {"ReplicatedJob": "replicated job", "GlobalJob": "global job"}.get(
            name, name.lower()
        )
    return ""


def running_count(service: Obj, tasks: Iterable[Obj]) -> int:
    """ServiceStatus.RunningTasks when listed with status=true; else counted from tasks."""
    running = _get(service, "ServiceStatus", "RunningTasks")
    if isinstance(running, int):
        return running
    sid = object_id(service)
    return sum(
        1
        for t in tasks
        if t.get("ServiceID") == sid
        and t.get("DesiredState") == "running"
        and _get(t, "Status", "State") == "running"
    )


# -- the directories --------------------------------------------------------------

SERVICE_ORDER = (
    "ID", "Name", "Image", "Mode", "Replicas", "Running", "CreatedAt", "UpdatedAt",
    "UpdateStatus", "Labels", "Ports", "ctl", "err", "logs", "inspect.json", "tasks", LIVE,
)  # fmt: skip
NODE_ORDER = (
    "ID", "Hostname", "Role", "Availability", "State", "Addr", "EngineVersion", "Leader",
    "Labels", "ctl", "err", "inspect.json", LIVE,
)  # fmt: skip
TASK_ORDER = (
    "ID", "Service", "Slot", "Node", "DesiredState", "State", "Message", "Error",
    "ContainerID", "ExitCode", "Timestamp", "inspect.json",
)  # fmt: skip


def _update_status(status: Any) -> _Dir:
    """UpdateStatus's fields, its two times as Unix seconds like every time in the tree."""
    files: _Dir = dict(scalar_files(status, skip_empty=False))
    for key in ("StartedAt", "CompletedAt"):
        if key in files:
            files[key] = render(unix_seconds(status[key]))
    return files


def service_spec(service: Obj, tasks: Iterable[Obj], names: Mapping[str, str]) -> Tree:
    """The whole directory of one service; `tasks` may hold other services' tasks."""
    tasks = list(tasks)
    spec: _Dir = {
        "ID": render(object_id(service)),
        "Name": render(_get(service, "Spec", "Name") or ""),
        "Image": render(_get(service, "Spec", "TaskTemplate", "ContainerSpec", "Image") or ""),
        "Mode": render(service_mode(service)),
    }
    replicas = _get(service, "Spec", "Mode", "Replicated", "Replicas")
    if isinstance(replicas, int):
        spec["Replicas"] = render(replicas)
    spec["Running"] = render(running_count(service, tasks))
    spec["CreatedAt"] = render(unix_seconds(service.get("CreatedAt")))
    spec["UpdatedAt"] = render(unix_seconds(service.get("UpdatedAt")))
    spec["UpdateStatus"] = _update_status(service.get("UpdateStatus"))
    spec["Labels"] = _labels(_get(service, "Spec", "Labels"))
    # Endpoint.Ports is what Docker allocated (a published port it picked
    # included); before the allocator ran there is only the spec's wish.
    ports = _get(service, "Endpoint", "Ports") or _get(service, "Spec", "EndpointSpec", "Ports")
    spec["Ports"] = {
        str(i): scalar_files(p, skip_empty=False)
        for i, p in enumerate(p for p in ports or () if isinstance(p, Mapping))
    }
    spec["ctl"] = live_link(Special.CTL)
    spec["err"] = Special.ERR
    spec["logs"] = live_link(Special.LOGS)
    spec["inspect.json"] = Special.INSPECT
    spec["tasks"] = {
        escape_name(key): Link(f"../../../tasks/{object_id(t)}")
        for key, t in current_tasks(service, tasks, names).items()
    }
    spec[LIVE] = Unlisted(ctl=Special.CTL, logs=Special.LOGS)
    return spec


def node_spec(node: Obj) -> Tree:
    """The whole directory of one node; Leader only for managers, as `docker node ls`."""
    spec: _Dir = {
        "ID": render(object_id(node)),
        "Hostname": render(_get(node, "Description", "Hostname") or ""),
        "Role": render(_get(node, "Spec", "Role") or ""),
        "Availability": render(_get(node, "Spec", "Availability") or ""),
        "State": render(_get(node, "Status", "State") or ""),
        "Addr": render(_get(node, "Status", "Addr") or ""),
        "EngineVersion": render(_get(node, "Description", "Engine", "EngineVersion") or ""),
    }
    manager = node.get("ManagerStatus")
    if isinstance(manager, Mapping):
        spec["Leader"] = render(manager.get("Leader") is True)
    spec["Labels"] = _labels(_get(node, "Spec", "Labels"))
    spec["ctl"] = live_link(Special.CTL)
    spec["err"] = Special.ERR
    spec["inspect.json"] = Special.INSPECT
    spec[LIVE] = Unlisted(ctl=Special.CTL)
    return spec


def task_spec(task: Obj, service_dirs: Mapping[str, str], node_dirs: Mapping[str, str]) -> Tree:
    """The whole directory of one task.

    Service and Node hold the names of their directories (`service_dirs`,
    `node_dirs`: ID -> name), or the ID where Docker no longer lists the
    object. Slot is empty for a global service's task, ExitCode while the
    task has no container yet.
    """
    status = task.get("Status")
    slot = task.get("Slot")
    sid = str(task.get("ServiceID") or "")
    nid = str(task.get("NodeID") or "")
    exit_code = _get(status, "ContainerStatus", "ExitCode")
    return {
        "ID": render(object_id(task)),
        "Service": render(service_dirs.get(sid, sid)),
        "Slot": render(slot if isinstance(slot, int) and slot > 0 else ""),
        "Node": render(node_dirs.get(nid, nid)),
        "DesiredState": render(task.get("DesiredState") or ""),
        "State": render(_get(status, "State") or ""),
        "Message": render(_get(status, "Message") or ""),
        "Error": render(_get(status, "Err") or ""),
        "ContainerID": render(_get(status, "ContainerStatus", "ContainerID") or ""),
        "ExitCode": render(exit_code if isinstance(exit_code, int) else ""),
        "Timestamp": render(unix_seconds(_get(status, "Timestamp"))),
        "inspect.json": Special.INSPECT,
    }


def swarm_spec(services: Iterable[Obj], tasks: Iterable[Obj], nodes: Iterable[Obj]) -> Tree:
    """The whole cluster at once, from one answer of each list; for tests and tools
    (the filesystem builds each directory when it is first looked at)."""
    # An object without an ID cannot be named or asked about again: left out.
    services, tasks, nodes = (
        [o for o in objs if object_id(o)] for objs in (services, tasks, nodes)
    )
    nnames = node_names(nodes)
    snames = {object_id(s): service_name(s) for s in services}
    return {
        "services": {service_name(s): service_spec(s, tasks, nnames) for s in services},
        "nodes": {nnames[object_id(n)]: node_spec(n) for n in nodes},
        "tasks": {object_id(t): task_spec(t, snames, nnames) for t in tasks},
    }
