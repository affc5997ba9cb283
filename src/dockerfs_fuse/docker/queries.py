"""GET requests whose answer is one JSON list or object, checked before use,
and requests whose answer is only their status (`send`).

The Swarm and engine-view endpoints are plain reads through a DockerSource,
so they share its deadlines, request counters and error kinds; an answer of
the wrong shape is an ApiError here rather than a TypeError in a caller.
"""

from __future__ import annotations

import json
from typing import Any

import aiodocker

from dockerfs_fuse.docker.errors import ApiError
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.swarm_ctl import Request


async def get_json(
    source: DockerSource, what: str, path: str, params: dict[str, str] | None = None
) -> object:
    """`GET path`, decoded; `what` names it in the source's request counts."""

    async def fetch(d: aiodocker.Docker) -> object:
        answer: object = await d._query_json(path, method="GET", params=params or {})
        return answer

    return await source.call(what, fetch)


async def get_list(
    source: DockerSource, what: str, path: str, params: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """A JSON list of objects; an entry that is not an object is left out."""
    answer = await get_json(source, what, path, params)
    if not isinstance(answer, list):
        raise ApiError(f"{path}: not a JSON list")
    return [o for o in answer if isinstance(o, dict)]


async def get_object(source: DockerSource, what: str, path: str) -> dict[str, Any]:
    answer = await get_json(source, what, path)
    if not isinstance(answer, dict):
        raise ApiError(f"{path}: not a JSON object")
    return answer


async def send(source: DockerSource, what: str, request: Request) -> None:
    """One request whose answer says nothing but its status; `body` goes as JSON."""
    body = None if request.body is None else json.dumps(request.body)
    headers = {"Content-Type": "application/json"}

    async def run(d: aiodocker.Docker) -> None:
        async with d._query(
            request.path, method=request.method, params=request.params, data=body, headers=headers
        ) as resp:
            await resp.read()

    await source.call(what, run)
