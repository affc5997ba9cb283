"""Docker's Swarm endpoints (services, tasks, nodes), asked through a DockerSource.

docker_source stays the only module that imports aiodocker: these functions
hand it small coroutines that use the client object it passes in, so the
deadlines, the asyncio bridge, the request counters and the error kinds
are the same as for containers. What Swarm adds to the error kinds:

- a worker's API refuses every cluster request with 503: `NotManager`
  (an ApiError, so EIO), with Docker's own explanation;
- Swarm's "failed precondition" (removing a node that is up, demoting the
  last manager, rolling back a service that was never updated) comes as a
  400 or 500: `Conflict` (EBUSY), like a container's state conflicts;
- an update sent with a version someone else has since replaced ("update
  out of sequence") is retried on a fresh read, a few times.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

from dockerfs_fuse.docker.bridge import Stream
from dockerfs_fuse.docker.source import (
    LOGS_TIMEOUT,
    ApiError,
    Conflict,
    DockerProblem,
    DockerSource,
    NotFound,
)
from dockerfs_fuse.engine.logs import Demuxer
from dockerfs_fuse.model.swarm_ctl import Request, SwarmCommand, node_request, service_request

log = logging.getLogger(__name__)
T = TypeVar("T")

UPDATE_ATTEMPTS = 3


class NotManager(ApiError):
    """The engine is a swarm worker (or in no swarm): it cannot see or change the cluster."""


class OutOfSequence(Conflict):
    """The object changed between our read and our update."""


def _swarm_problem(exc: Exception) -> DockerProblem | None:
    """Swarm's errors that the generic translation would call BadRequest or ApiError."""
    status = getattr(exc, "status", None)
    message = str(getattr(exc, "message", exc))
    if status == 503:
        return NotManager(message)
    if status in (400, 500) and "FailedPrecondition" in message:
        return Conflict(message)
    if status == 500 and "update out of sequence" in message:
        return OutOfSequence(message)
    return None  # docker_source translates the rest


async def _swarm_errors(request: Awaitable[T]) -> T:
    """Await one request (on the asyncio side), naming Swarm's errors first."""
    try:
        return await request
    except Exception as exc:
        problem = _swarm_problem(exc)
        if problem is None:
            raise
        raise problem from exc


async def _json(
    source: DockerSource, what: str, path: str, params: dict[str, str] | None = None
) -> Any:
    async def fetch(d: Any) -> Any:
        return await _swarm_errors(d._query_json(path, method="GET", params=params or {}))

    return await source._call(what, fetch, None)


async def _send(source: DockerSource, what: str, request: Request) -> None:
    body = None if request.body is None else json.dumps(request.body)
    headers = {"Content-Type": "application/json"}

    async def send(d: Any) -> None:
        async with d._query(
            request.path, method=request.method, params=request.params, data=body, headers=headers
        ) as resp:
            await resp.read()

    async def run(d: Any) -> None:
        await _swarm_errors(send(d))

    await source._call(what, run, None)


# Service names, hostnames and IDs: anything else names nothing, and must not
# reach a URL path ("..", "?", "/").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


def _ref(ref: str) -> str:
    if not _NAME.fullmatch(ref):
        raise NotFound(f"no such service, node or task: {ref[:80]!r}")
    return ref


# -- reading --------------------------------------------------------------------------


async def list_services(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /services?status=true`: with each service's running and desired counts."""
    return list(await _json(source, "services", "services", {"status": "true"}))


async def list_tasks(source: DockerSource, service: str | None = None) -> list[dict[str, Any]]:
    """One `GET /tasks`, the whole cluster's or one service's (by ID or name)."""
    params = {"filters": json.dumps({"service": [service]})} if service else {}
    return list(
        await _json(source, "tasks" if service is None else "tasks?service", "tasks", params)
    )


async def list_nodes(source: DockerSource) -> list[dict[str, Any]]:
    return list(await _json(source, "nodes", "nodes"))


async def inspect_service(source: DockerSource, ref: str) -> dict[str, Any]:
    """`GET /services/{ref}`: ref is an ID, an ID prefix or a name, as Docker resolves it."""
    return dict(await _json(source, "services/inspect", f"services/{_ref(ref)}"))


async def inspect_node(source: DockerSource, ref: str) -> dict[str, Any]:
    return dict(await _json(source, "nodes/inspect", f"nodes/{_ref(ref)}"))


async def inspect_task(source: DockerSource, task_id: str) -> dict[str, Any]:
    return dict(await _json(source, "tasks/inspect", f"tasks/{_ref(task_id)}"))


async def local_node(source: DockerSource) -> dict[str, Any]:
    """`GET /info`'s Swarm part: LocalNodeState, ControlAvailable (a manager), NodeID."""
    info = await _json(source, "info", "info")
    swarm = info.get("Swarm") if isinstance(info, dict) else None
    return dict(swarm or {})


async def service_logs(source: DockerSource, ref: str) -> bytes:
    """Every task's output so far, both streams, frame headers removed:
    what `docker service logs --raw` prints."""

    async def read(d: Any) -> bytes:
        params = {"stdout": "1", "stderr": "1"}
        async with d._query(f"services/{_ref(ref)}/logs", params=params) as resp:
            demux = Demuxer(resp.headers.get("Content-Type", ""))
            return demux.feed(await resp.read()) + demux.flush()

    async def fetch(d: Any) -> bytes:
        return await _swarm_errors(read(d))

    return bytes(await source._call("services/logs", fetch, LOGS_TIMEOUT))


# -- control --------------------------------------------------------------------------


async def control_service(source: DockerSource, ref: str, command: SwarmCommand) -> None:
    """Carry out a service ctl command; returns once Docker accepted the change
    (the tasks follow at the orchestrator's pace)."""
    if command.action == "rm":
        await _send(source, "services/rm", Request("DELETE", f"services/{_ref(ref)}"))
        return
    for attempt in range(1, UPDATE_ATTEMPTS + 1):
        service = await inspect_service(source, ref)
        try:
            await _send(source, "services/update", service_request(service, command))
            return
        except OutOfSequence:
            if attempt == UPDATE_ATTEMPTS:
                raise
            log.info("service %s changed while we updated it; reading it again", ref)


async def control_node(source: DockerSource, ref: str, command: SwarmCommand) -> None:
    """Carry out a node ctl command; returns once Docker accepted the change."""
    if command.action == "rm":
        await _send(source, "nodes/rm", Request("DELETE", f"nodes/{_ref(ref)}"))
        return
    for attempt in range(1, UPDATE_ATTEMPTS + 1):
        node = await inspect_node(source, ref)
        try:
            await _send(source, "nodes/update", node_request(node, command))
            return
        except OutOfSequence:
            if attempt == UPDATE_ATTEMPTS:
                raise
            log.info("node %s changed while we updated it; reading it again", ref)


# -- events ---------------------------------------------------------------------------


def events(source: DockerSource) -> Stream:
    """Docker's service, node and container events, as decoded JSON, until the stream drops.

    Container events are the manager engine's own: a task's state on another
    node sends none here, which is why the swarm cache also polls while the
    cluster converges.
    """

    return source.events(("service", "node", "container"), "swarm events")
