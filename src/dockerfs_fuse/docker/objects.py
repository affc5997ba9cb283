"""The engine view's endpoints (images, volumes, networks, compose projects'
containers), asked through a DockerSource as the Swarm ones are (swarm.py):
the same deadlines, counters and error kinds."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from dockerfs_fuse.docker.errors import ApiError, NotFound
from dockerfs_fuse.docker.queries import get_json, get_list, get_object, send
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.containers import could_name_an_object
from dockerfs_fuse.model.objects import PROJECT_LABEL
from dockerfs_fuse.model.swarm_ctl import Request


def _ref(ref: str) -> str:
    """An image ID, a volume's name or a network's ID, checked before it goes in a URL path."""
    if not could_name_an_object(ref):
        raise NotFound(f"no such object: {ref[:80]!r}")
    return quote(ref, safe="")


async def list_images(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /images/json`: every image but intermediate layers, as `docker images`."""
    return await get_list(source, "images", "images/json")


async def list_volumes(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /volumes`."""
    answer = await get_json(source, "volumes", "volumes")
    volumes = answer.get("Volumes") if isinstance(answer, dict) else None
    if answer is not None and not isinstance(answer, dict):
        raise ApiError("volumes: not a JSON object")
    return [v for v in volumes or () if isinstance(v, dict)]


async def list_networks(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /networks`."""
    return await get_list(source, "networks", "networks")


async def list_project_containers(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /containers/json?all=1` of the containers a compose project labels."""
    filters = json.dumps({"label": [PROJECT_LABEL]})
    return await get_list(source, "projects", "containers/json", {"all": "1", "filters": filters})


async def inspect_image(source: DockerSource, image_id: str) -> dict[str, Any]:
    return await get_object(source, "images/inspect", f"images/{_ref(image_id)}/json")


async def inspect_volume(source: DockerSource, name: str) -> dict[str, Any]:
    return await get_object(source, "volumes/inspect", f"volumes/{_ref(name)}")


async def inspect_network(source: DockerSource, network_id: str) -> dict[str, Any]:
    return await get_object(source, "networks/inspect", f"networks/{_ref(network_id)}")


async def list_users(source: DockerSource) -> list[dict[str, Any]]:
    """One `GET /containers/json?all=1`: every container, stopped ones too, with
    the image, volumes and networks it uses (the engine view's cross links)."""
    return await get_list(source, "users", "containers/json", {"all": "1"})


async def image_history(source: DockerSource, image_id: str) -> list[dict[str, Any]]:
    """`GET /images/<id>/history`: the image's layers, newest first."""
    return await get_list(source, "images/history", f"images/{_ref(image_id)}/history")


# -- control (model/objects_ctl.py) ------------------------------------------------------


def _image_ref(ref: str) -> str:
    """An image ID or a checked reference (`team/app:1`), slashes kept: Docker's
    image routes take the rest of the path as the name."""
    return quote(ref, safe="/:@")


async def tag_image(source: DockerSource, image_id: str, repo: str, tag: str) -> None:
    path = f"images/{_ref(image_id)}/tag"
    await send(source, "images/tag", Request("POST", path, {"repo": repo, "tag": tag}))


async def remove_image(source: DockerSource, ref: str, *, force: bool = False) -> None:
    """`docker rmi [-f] REF`: by ID, the image; by tag, that tag (and the image
    with it when it was its last)."""
    params = {"force": "1"} if force else {}
    await send(source, "images/rm", Request("DELETE", f"images/{_image_ref(ref)}", params))


async def remove_volume(source: DockerSource, name: str, *, force: bool = False) -> None:
    params = {"force": "1"} if force else {}
    await send(source, "volumes/rm", Request("DELETE", f"volumes/{_ref(name)}", params))


async def connect_network(
    source: DockerSource, network_id: str, container: str, *, connect: bool = True
) -> None:
    """`docker network connect|disconnect NETWORK CONTAINER`: Docker resolves
    the container's name, ID or unique prefix."""
    verb = "connect" if connect else "disconnect"
    path = f"networks/{_ref(network_id)}/{verb}"
    await send(source, f"networks/{verb}", Request("POST", path, body={"Container": container}))


async def remove_network(source: DockerSource, network_id: str) -> None:
    await send(source, "networks/rm", Request("DELETE", f"networks/{_ref(network_id)}"))
