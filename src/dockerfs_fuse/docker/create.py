"""The requests a `clone` write makes: create (and start) a container, create
a volume or a network, pull or tag an image. Made through a DockerSource, so
they share its deadlines, counters and error kinds; a refusal is classed
here (a name in use, a full disk) as the errno the writer gets."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiodocker
import aiohttp

from dockerfs_fuse.docker.bridge import Stream
from dockerfs_fuse.docker.errors import AlreadyExists, ApiError, Conflict, DockerProblem, NoSpace
from dockerfs_fuse.docker.source import DockerSource

# A create answers once the engine has made its layer and config: longer
# than a list, far shorter than a start that runs a slow entrypoint.
CREATE_TIMEOUT = 30.0
# `start` waits for the container's process to be running (an exec error
# comes back as its answer).
START_TIMEOUT = 60.0
# Docker's words for a name another object has (409 for containers and
# networks; some engines answer 500).
_IN_USE = ("already in use", "already exists")


def classified(exc: DockerProblem) -> DockerProblem:
    """A refusal as the kind the writer's errno says: EEXIST for a name in
    use, ENOSPC for a full disk, else as translated."""
    message = str(exc)
    if "no space left on device" in message.lower():
        return NoSpace(message)
    if isinstance(exc, Conflict | ApiError) and any(w in message for w in _IN_USE):
        return AlreadyExists(message)
    return exc


async def _post(
    source: DockerSource,
    what: str,
    path: str,
    *,
    params: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = CREATE_TIMEOUT,
) -> Any:
    async def send(d: aiodocker.Docker) -> Any:
        return await d._query_json(path, method="POST", params=params or {}, data=body)

    try:
        return await source.call(what, send, timeout)
    except DockerProblem as exc:
        raise classified(exc) from exc


def _body(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


async def create_container(source: DockerSource, name: str, body: bytes) -> str:
    """`POST /containers/create[?name=NAME]`; the new container's full ID."""
    params = {"name": name} if name else None
    answer = await _post(source, "containers/create", "containers/create", params=params, body=body)
    cid = answer.get("Id") if isinstance(answer, dict) else None
    if not isinstance(cid, str) or not cid:
        raise ApiError(f"create: no Id in the answer {str(answer)[:80]!r}")
    return cid


async def start_container(source: DockerSource, cid: str) -> None:
    async def send(d: aiodocker.Docker) -> None:
        async with d._query(f"containers/{quote(cid)}/start", method="POST"):
            pass

    try:
        await source.call("containers/start", send, START_TIMEOUT)
    except DockerProblem as exc:
        raise classified(exc) from exc


async def remove_container(source: DockerSource, cid: str) -> None:
    """Force-remove a container this mount just made and could not start."""

    async def send(d: aiodocker.Docker) -> None:
        params = {"force": "1", "v": "1"}
        async with d._query(f"containers/{quote(cid)}", method="DELETE", params=params):
            pass

    await source.call("containers/rm", send)


async def create_volume(source: DockerSource, body: dict[str, Any]) -> str:
    """`POST /volumes/create`; the volume's name (the engine's, if none was given)."""
    answer = await _post(source, "volumes/create", "volumes/create", body=_body(body))
    name = answer.get("Name") if isinstance(answer, dict) else None
    if not isinstance(name, str) or not name:
        raise ApiError(f"volume create: no Name in the answer {str(answer)[:80]!r}")
    return name


async def create_network(source: DockerSource, body: dict[str, Any]) -> str:
    """`POST /networks/create`; the network's ID."""
    answer = await _post(source, "networks/create", "networks/create", body=_body(body))
    nid = answer.get("Id") if isinstance(answer, dict) else None
    if not isinstance(nid, str) or not nid:
        raise ApiError(f"network create: no Id in the answer {str(answer)[:80]!r}")
    return nid


async def tag_image(source: DockerSource, ref: str, repo: str, tag: str) -> None:
    """`POST /images/REF/tag?repo=REPO&tag=TAG`."""

    async def send(d: aiodocker.Docker) -> None:
        path = f"images/{quote(ref, safe='')}/tag"
        async with d._query(path, method="POST", params={"repo": repo, "tag": tag}):
            pass

    await source.call("images/tag", send)


async def image_id(source: DockerSource, ref: str) -> str:
    """The full ID (`sha256:...`) of the image a reference names."""

    async def fetch(d: aiodocker.Docker) -> Any:
        return await d._query_json(f"images/{quote(ref, safe='')}/json")

    answer = await source.call("images/inspect", fetch)
    iid = answer.get("Id") if isinstance(answer, dict) else None
    if not isinstance(iid, str):
        raise ApiError(f"inspect {ref[:80]!r}: no Id")
    return iid


def pull(source: DockerSource, image: str, tag: str) -> Stream[dict[str, Any]]:
    """`POST /images/create?fromImage=IMAGE&tag=TAG`: the engine's progress
    messages as they come, until the pull ends. A failure the engine reports
    inside the stream (`errorDetail`) ends it with that error; the engine's
    deadline is a connect's and a silence's, never the whole pull's."""

    async def produce(d: aiodocker.Docker, emit: Callable[[dict[str, Any]], None]) -> None:
        params = {"fromImage": image, "tag": tag}
        timeout = aiohttp.ClientTimeout(
            total=None, connect=source.timeout, sock_connect=source.timeout, sock_read=300
        )
        async with d._query("images/create", method="POST", params=params, timeout=timeout) as r:
            async for line in r.content:
                if not line.strip():
                    continue
                message = json.loads(line)
                if not isinstance(message, dict):
                    continue
                error = message.get("errorDetail") or message.get("error")
                if error:
                    text = error.get("message") if isinstance(error, dict) else error
                    raise aiodocker.DockerError(_stream_status(str(text)), str(text))
                emit(message)

    return source.stream("images/pull", produce)


def _stream_status(message: str) -> int:
    """The HTTP status an error inside a pull's stream would have had."""
    lowered = message.lower()
    if "not found" in lowered or "manifest unknown" in lowered or "does not exist" in lowered:
        return 404
    return 500


class Creator:
    """The requests above, bound to one engine (what engine/clone.py's Cloner is given)."""

    def __init__(self, source: DockerSource) -> None:
        self.source = source

    async def create_container(self, name: str, body: bytes) -> str:
        return await create_container(self.source, name, body)

    async def start_container(self, cid: str) -> None:
        await start_container(self.source, cid)

    async def remove_container(self, cid: str) -> None:
        await remove_container(self.source, cid)

    async def create_volume(self, body: dict[str, Any]) -> str:
        return await create_volume(self.source, body)

    async def create_network(self, body: dict[str, Any]) -> str:
        return await create_network(self.source, body)

    async def tag_image(self, ref: str, repo: str, tag: str) -> None:
        await tag_image(self.source, ref, repo, tag)

    async def image_id(self, ref: str) -> str:
        return await image_id(self.source, ref)

    async def pull(
        self, image: str, tag: str, progress: Callable[[Mapping[str, Any]], None]
    ) -> None:
        stream = pull(self.source, image, tag)
        try:
            while (message := await stream.get()) is not None:
                progress(message)
        except DockerProblem as exc:
            raise classified(exc) from exc
        finally:
            stream.close()
