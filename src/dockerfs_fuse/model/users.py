"""Which containers use which image, volume or network: the engine view's cross links.

Pure functions from one container list (`GET /containers/json?all=1`,
stopped containers included, as `docker ps -a --filter ...` counts them)
to the links an object's directory holds:

```
images/<id>/Containers/<cid>     -> ../../../containers/<cid>   the container's ImageID
volumes/<name>/UsedBy/<cid>      -> ../../../containers/<cid>   its Mounts of Type volume, by Name
networks/<name>/Containers/<cid> -> ../../../containers/<cid>   its NetworkSettings.Networks
```

An image's containers are those made from exactly that image (`ImageID`),
not from images built on it, which `--filter ancestor=` would add. A
container's network is its entry's `NetworkID`, or, where the engine left
that empty, the network its entry's key names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from dockerfs_fuse.model.containers import Link, container_id
from dockerfs_fuse.model.swarm import Obj, Tree

# Each kind's directory of links, inside an object's directory.
LINK_DIRS = {"images": "Containers", "volumes": "UsedBy", "networks": "Containers"}


@dataclass
class Users:
    """Container IDs (sorted) by what they use."""

    images: dict[str, list[str]] = field(default_factory=dict)  # by image ID, no sha256:
    volumes: dict[str, list[str]] = field(default_factory=dict)  # by volume name
    networks: dict[str, list[str]] = field(default_factory=dict)  # by network ID
    network_names: dict[str, list[str]] = field(default_factory=dict)  # where no ID was given


def _add(to: dict[str, list[str]], key: str, cid: str) -> None:
    if key:
        ids = to.setdefault(key, [])
        if not ids or ids[-1] != cid:
            ids.append(cid)


def users(containers: Iterable[Obj]) -> Users:
    """Who uses what, from one container list."""
    found = Users()
    for c in sorted(containers, key=container_id):
        cid = container_id(c)
        if not cid:
            continue
        _add(found.images, str(c.get("ImageID") or "").removeprefix("sha256:"), cid)
        for mount in c.get("Mounts") or ():
            if isinstance(mount, Mapping) and mount.get("Type") == "volume":
                _add(found.volumes, str(mount.get("Name") or ""), cid)
        settings = c.get("NetworkSettings")
        networks = settings.get("Networks") if isinstance(settings, Mapping) else None
        for name, endpoint in (networks or {}).items() if isinstance(networks, Mapping) else ():
            nid = endpoint.get("NetworkID") if isinstance(endpoint, Mapping) else None
            if nid:
                _add(found.networks, str(nid), cid)
            else:
                _add(found.network_names, str(name), cid)
    return found


def links(cids: Iterable[str]) -> dict[str, Link]:
    """A link directory's entries: each container by ID, into the engine's containers/."""
    return {cid: Link(f"../../../containers/{cid}") for cid in sorted(set(cids))}


def with_links(spec: Tree, kind: str, cids: Iterable[str]) -> Tree:
    """An object's directory with its link directory added."""
    return {**spec, LINK_DIRS[kind]: links(cids)}


def network_users(found: Users, network_id: str, name: str) -> list[str]:
    return [*found.networks.get(network_id, ()), *found.network_names.get(name, ())]
