"""The engine view's images, volumes, networks and compose projects as files.

Pure functions from Docker's list answers (`GET /images/json`,
`GET /volumes`, `GET /networks`, and the containers a compose project
labels) to nested mappings of names to file contents, as model/containers.py
does for a container and model/swarm.py for a cluster:

```
images/<id>/        ID RepoTags/<n> RepoDigests/<n> Created Size Labels/<key> inspect.json
                    history.json
images/<tag>        -> <id>  (unlisted: found by name, as a container's name is)
volumes/<name>/     Name Driver Mountpoint Scope CreatedAt Labels/<key> Options/<key> inspect.json
                    data -> .live/data  (the volume's files, engine/volume_data.py)
networks/<name>/    ID Name Driver Scope Internal Subnets/<n> Labels/<key> inspect.json
networks/<id>       -> <name>  (unlisted)
projects/<project>/ WorkingDir ConfigFiles services/<service>/<n> -> ../../../../containers/<id>
```

The silent cases, chosen here and documented in docs/engine.md: an image's
`<none>:<none>` and `<none>@<none>` placeholders are left out of RepoTags
and RepoDigests and make no link (a dangling image is listed by its ID with
an empty RepoTags/); anonymous volumes are listed by their names as the
engine lists them; built-in networks (bridge, host, none) too. A network
name two networks share (possible on old engines) names neither: both are
listed by ID.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias

from dockerfs_fuse.model.containers import (
    LIVE,
    Link,
    Special,
    Unlisted,
    container_id,
    escape_name,
    live_link,
    named_entries,
    render,
)
from dockerfs_fuse.model.swarm import Obj, Tree, unix_seconds

_Dir: TypeAlias = "dict[str, Tree | bytes | Special | Link]"

KINDS = ("images", "volumes", "networks", "projects")
# A volume's files: a tree read as a container's root/ is, under this name.
DATA = "data"
# What an image's tag or digest list holds where the image has none.
_PLACEHOLDERS = frozenset({"<none>:<none>", "<none>@<none>"})

# The labels `docker compose` (v1 and v2) puts on each container it makes.
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"
CONFIG_FILES_LABEL = "com.docker.compose.project.config_files"


def _labels(labels: Any) -> _Dir:
    if not isinstance(labels, Mapping):
        return {}
    return named_entries((str(k), render(v)) for k, v in labels.items())


def _numbered(items: Any) -> _Dir:
    return {str(i): render(x) for i, x in enumerate(items)}


def _with_ctl(spec: _Dir) -> Tree:
    """An object's directory with its `ctl` (model/objects_ctl.py), a link into
    the unlisted `.live/` so that a walk never opens it, and its `err`."""
    spec["ctl"] = live_link(Special.CTL)
    spec["err"] = Special.ERR
    live = spec.get(LIVE)
    spec[LIVE] = Unlisted({**(live if isinstance(live, Unlisted) else {}), "ctl": Special.CTL})
    return spec


# -- images ---------------------------------------------------------------------------


def image_id(image: Obj) -> str:
    """The directory of an image: its ID without `sha256:` (64 hex digits)."""
    full = str(image.get("Id") or image.get("ID") or "")
    return escape_name(full.removeprefix("sha256:"))


def image_tags(image: Obj) -> list[str]:
    """The image's tags, placeholders left out."""
    tags = image.get("RepoTags")
    return [str(t) for t in tags or () if str(t) not in _PLACEHOLDERS]


def image_digests(image: Obj) -> list[str]:
    digests = image.get("RepoDigests")
    return [str(d) for d in digests or () if str(d) not in _PLACEHOLDERS]


def image_created(image: Obj) -> int:
    created = image.get("Created")
    return created if isinstance(created, int) and created > 0 else 0


def image_spec(image: Obj) -> Tree:
    """The whole directory of one image."""
    size = image.get("Size")
    spec: _Dir = {
        "ID": render(image.get("Id") or ""),
        "RepoTags": _numbered(image_tags(image)),
        "RepoDigests": _numbered(image_digests(image)),
        "Created": render(image_created(image)),
        "Size": render(size if isinstance(size, int) else ""),
        "Labels": _labels(image.get("Labels")),
        "inspect.json": Special.INSPECT,
        "history.json": Special.HISTORY,
        # The image's filesystem holds a whole tree: behind a link, as a container's.
        "root": live_link(Special.ROOT),
        LIVE: Unlisted({"root": Special.ROOT}),
    }
    return _with_ctl(spec)


def image_aliases(images: Iterable[Obj]) -> dict[str, str]:
    """Each tag (escaped as a label key is) -> its image's directory name."""
    return {escape_name(tag): image_id(i) for i in images for tag in image_tags(i)}


# -- volumes ----------------------------------------------------------------------------


def volume_name(volume: Obj) -> str:
    return escape_name(str(volume.get("Name") or ""))


def volume_spec(volume: Obj) -> Tree:
    spec: _Dir = {
        "Name": render(volume.get("Name") or ""),
        "Driver": render(volume.get("Driver") or ""),
        "Mountpoint": render(volume.get("Mountpoint") or ""),
        "Scope": render(volume.get("Scope") or ""),
        "CreatedAt": render(unix_seconds(volume.get("CreatedAt"))),
        "Labels": _labels(volume.get("Labels")),
        "Options": _labels(volume.get("Options")),
        "inspect.json": Special.INSPECT,
        # The volume's files, a whole tree: behind a link, as an image's root/.
        "data": Link(f"{LIVE}/{DATA}"),
        LIVE: Unlisted({DATA: Special.ROOT}),
    }
    return _with_ctl(spec)


# -- networks ---------------------------------------------------------------------------


def network_id(network: Obj) -> str:
    return str(network.get("Id") or network.get("ID") or "")


def network_names(networks: Iterable[Obj]) -> dict[str, str]:
    """Network ID -> directory name: its name when no other network has it, else its ID."""
    networks = list(networks)
    counts: dict[str, int] = {}
    for n in networks:
        name = str(n.get("Name") or "")
        counts[name] = counts.get(name, 0) + 1
    out: dict[str, str] = {}
    for n in networks:
        name = str(n.get("Name") or "")
        nid = network_id(n)
        out[nid] = escape_name(name) if name and counts[name] == 1 else escape_name(nid)
    return out


def network_aliases(networks: Iterable[Obj]) -> dict[str, str]:
    """A network listed by name is also reachable, unlisted, by its full ID."""
    names = network_names(networks)
    return {nid: name for nid, name in names.items() if nid and name != nid}


def subnets(network: Obj) -> list[str]:
    ipam = network.get("IPAM")
    config = ipam.get("Config") if isinstance(ipam, Mapping) else None
    return [
        str(c["Subnet"])
        for c in config or ()
        if isinstance(c, Mapping) and isinstance(c.get("Subnet"), str) and c["Subnet"]
    ]


def network_spec(network: Obj) -> Tree:
    spec: _Dir = {
        "ID": render(network_id(network)),
        "Name": render(network.get("Name") or ""),
        "Driver": render(network.get("Driver") or ""),
        "Scope": render(network.get("Scope") or ""),
        "Internal": render(network.get("Internal") is True),
        "Subnets": _numbered(subnets(network)),
        "Labels": _labels(network.get("Labels")),
        "inspect.json": Special.INSPECT,
    }
    return _with_ctl(spec)


# -- compose projects -------------------------------------------------------------------


def _label(container: Obj, key: str) -> str:
    labels = container.get("Labels")
    return str(labels.get(key) or "") if isinstance(labels, Mapping) else ""


def project_of(container: Obj) -> str:
    return _label(container, PROJECT_LABEL)


def _number_key(name: str) -> tuple[bool, int, str]:
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)


def projects(containers: Iterable[Obj]) -> dict[str, list[Obj]]:
    """The containers of each compose project (by its label), by escaped project name."""
    found: dict[str, list[Obj]] = {}
    for c in containers:
        project = project_of(c)
        if project and container_id(c):
            found.setdefault(escape_name(project), []).append(c)
    return dict(sorted(found.items()))


def project_spec(containers: Iterable[Obj]) -> Tree:
    """One project's directory, from its containers (all of them, stopped ones too).

    A service's entries are its containers by number; a container without a
    number (a one-off `compose run`) goes by its ID. WorkingDir and
    ConfigFiles are the labels of the oldest container that has them.
    """
    containers = sorted(containers, key=lambda c: (_created(c), container_id(c)))
    services: dict[str, dict[str, Link]] = {}
    for c in containers:
        service = escape_name(_label(c, SERVICE_LABEL) or "-")
        number = escape_name(_label(c, NUMBER_LABEL) or container_id(c))
        entries = services.setdefault(service, {})
        if number not in entries:
            entries[number] = Link(f"../../../../containers/{container_id(c)}")
    working_dir = next((w for c in containers if (w := _label(c, WORKING_DIR_LABEL))), "")
    config_files = next((f for c in containers if (f := _label(c, CONFIG_FILES_LABEL))), "")
    spec: _Dir = {
        "WorkingDir": render(working_dir),
        "ConfigFiles": render(config_files),
        "services": {
            name: dict(sorted(entries.items(), key=lambda kv: _number_key(kv[0])))
            for name, entries in sorted(services.items())
        },
    }
    return _with_ctl(spec)


def _created(c: Obj) -> int:
    created = c.get("Created")
    return created if isinstance(created, int) else 0


def project_created(containers: Iterable[Obj]) -> int:
    """A project's directory mtime: its oldest container's Created."""
    return min((_created(c) for c in containers), default=0)
