"""The helper containers' endpoints: create one (never started), list ours by
label, remove one; asked through a DockerSource as the others are, so they
share its deadlines, counters and error kinds."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import aiodocker

from dockerfs_fuse.docker.errors import ApiError, NotFound
from dockerfs_fuse.docker.queries import get_list
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.containers import could_name_an_object


async def create_container(source: DockerSource, body: dict[str, Any]) -> str:
    """`POST /containers/create`; the new container's ID."""

    async def create(d: aiodocker.Docker) -> object:
        answer: object = await d._query_json("containers/create", method="POST", data=body)
        return answer

    answer = await source.call("helpers/create", create)
    cid = answer.get("Id") if isinstance(answer, dict) else None
    if not isinstance(cid, str) or not cid:
        raise ApiError("containers/create: no Id in the answer")
    return cid


async def remove_container(source: DockerSource, cid: str, volumes: bool) -> None:
    """`DELETE /containers/{id}?force=1`, with `&v=1` if `volumes` (its
    anonymous volumes go with it)."""
    if not could_name_an_object(cid):
        raise NotFound(f"no such container: {cid[:80]!r}")

    async def remove(d: aiodocker.Docker) -> None:
        params = {"force": "1", "v": "1"} if volumes else {"force": "1"}
        async with d._query(f"containers/{quote(cid, safe='')}", method="DELETE", params=params):
            pass

    await source.call("helpers/remove", remove)


async def list_labelled(source: DockerSource, label: str) -> list[dict[str, Any]]:
    """Every container (stopped and created ones too) that has `label`."""
    filters = json.dumps({"label": [label]})
    return await get_list(
        source, "helpers/list", "containers/json", {"all": "1", "filters": filters}
    )


class HelperApi:
    """engine/helpers.py's HelperEngine over a DockerSource; ours are the
    containers that carry `label`."""

    def __init__(self, source: DockerSource, label: str) -> None:
        self.source = source
        self.label = label

    async def create(self, body: dict[str, Any]) -> str:
        return await create_container(self.source, body)

    async def remove(self, cid: str, volumes: bool) -> None:
        await remove_container(self.source, cid, volumes)

    async def list_ours(self) -> list[dict[str, Any]]:
        return await list_labelled(self.source, self.label)
