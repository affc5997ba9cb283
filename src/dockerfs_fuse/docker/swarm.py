"""Docker's Swarm endpoints (services, tasks, nodes), asked through a DockerSource.

These functions hand the source small coroutines that use the client object
it passes in, so the deadlines, the asyncio bridge, the request counters and
the error kinds (Swarm's own included: see errors.py) are the same as for
containers. An update sent with a version someone else has since replaced
("update out of sequence") is retried on a fresh read, a few times.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dockerfs_fuse.docker.bridge import Stream
from dockerfs_fuse.docker.errors import NotFound, OutOfSequence
from dockerfs_fuse.docker.queries import get_list, get_object, send
from dockerfs_fuse.docker.source import DockerSource, Event
from dockerfs_fuse.model.containers import could_name_an_object
from dockerfs_fuse.model.swarm_ctl import Request, SwarmCommand, node_request, service_request

log = logging.getLogger(__name__)

UPDATE_ATTEMPTS = 3


def _ref(ref: str) -> str:
    """A service's, node's or task's name or ID, checked before it goes in a URL path."""
    if not could_name_an_object(ref):
        raise NotFound(f"no such service, node or task: {ref[:80]!r}")
    return ref


# -- reading --------------------------------------------------------------------------


async def list_services(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /services?status=true`: with each service's running and desired counts."""
    return await get_list(source, "services", "services", {"status": "true"})


async def list_tasks(source: DockerSource, service: str | None = None) -> list[dict[str, Any]]:
    """One `GET /tasks`, the whole cluster's or one service's (by ID or name)."""
    params = {"filters": json.dumps({"service": [service]})} if service else {}
    return await get_list(source, "tasks" if service is None else "tasks?service", "tasks", params)


async def list_nodes(source: DockerSource) -> list[dict[str, Any]]:
    return await get_list(source, "nodes", "nodes")


async def inspect_service(source: DockerSource, ref: str) -> dict[str, Any]:
    """`GET /services/{ref}`: ref is an ID, an ID prefix or a name, as Docker resolves it."""
    return await get_object(source, "services/inspect", f"services/{_ref(ref)}")


async def inspect_node(source: DockerSource, ref: str) -> dict[str, Any]:
    return await get_object(source, "nodes/inspect", f"nodes/{_ref(ref)}")


async def inspect_task(source: DockerSource, task_id: str) -> dict[str, Any]:
    return await get_object(source, "tasks/inspect", f"tasks/{_ref(task_id)}")


async def local_node(source: DockerSource) -> dict[str, Any]:
    """`GET /info`'s Swarm part: LocalNodeState, ControlAvailable (a manager), NodeID."""
    swarm = (await get_object(source, "info", "info")).get("Swarm")
    return dict(swarm) if isinstance(swarm, dict) else {}


# -- control --------------------------------------------------------------------------


async def control_service(source: DockerSource, ref: str, command: SwarmCommand) -> None:
    """Carry out a service ctl command; returns once Docker accepted the change
    (the tasks follow at the orchestrator's pace)."""
    await _control(source, "services", ref, command, inspect_service, service_request)


async def control_node(source: DockerSource, ref: str, command: SwarmCommand) -> None:
    """Carry out a node ctl command; returns once Docker accepted the change."""
    await _control(source, "nodes", ref, command, inspect_node, node_request)


async def _control(
    source: DockerSource,
    kind: str,
    ref: str,
    command: SwarmCommand,
    inspect: Callable[[DockerSource, str], Awaitable[dict[str, Any]]],
    request: Callable[[Mapping[str, Any], SwarmCommand], Request],
) -> None:
    """rm by reference; anything else an update of what a fresh read says, read
    again when someone else's update came in between."""
    if command.action == "rm":
        await send(source, f"{kind}/rm", Request("DELETE", f"{kind}/{_ref(ref)}"))
        return
    for attempt in range(1, UPDATE_ATTEMPTS + 1):
        current = await inspect(source, ref)
        try:
            await send(source, f"{kind}/update", request(current, command))
            return
        except OutOfSequence:
            if attempt == UPDATE_ATTEMPTS:
                raise
            log.info("%s %s changed while we updated it; reading it again", kind[:-1], ref)


# -- events ---------------------------------------------------------------------------


def events(source: DockerSource) -> Stream[Event]:
    """Docker's service, node and container events, as decoded JSON, until the stream drops.

    Container events are the manager engine's own: a task's state on another
    node sends none here, which is why the swarm cache also polls while the
    cluster converges.
    """
    return source.events(("service", "node", "container"), "swarm events")
