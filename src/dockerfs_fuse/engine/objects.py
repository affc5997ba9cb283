"""One engine's images/, volumes/, networks/ and projects/ (`--view=engine`).

The sibling of swarm.SwarmCache for the engine's other objects: it owns
those four directories under the engine's top directory (beside its
containers/, which engine/containers.py keeps), the last answer of each
list, and the inode table's entries for them. Policy, as the contract says:

- reading one of the four directories lists that kind again (one request;
  readers that arrive meanwhile share it), and nothing else lists it;
- a name nobody listed (a tag, a volume made since) lists its kind again,
  at most once a second per name (MissLimiter);
- files are snapshots of the last listing, as a container's are;
  `inspect.json` and an image's `history.json` ask the engine once per open;
- an image's or network's Containers/ and a volume's UsedBy/ (model/users.py)
  come from one list of every container, asked when one of them is read, and
  not when a kind is listed.

No event stream: a listing per read of the directory is what keeps these
fresh, and costs nothing while nobody looks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from dockerfs_fuse.docker import objects as api
from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.listed import ListedKinds, Lister
from dockerfs_fuse.engine.refresh import Refresher
from dockerfs_fuse.model.containers import NAME_MAX
from dockerfs_fuse.model.inodes import NS, Changes, Deferred, InodeTable, Node, subdirs_of
from dockerfs_fuse.model.objects import (
    KINDS,
    image_aliases,
    image_created,
    image_id,
    image_spec,
    network_aliases,
    network_id,
    network_names,
    network_spec,
    project_created,
    project_spec,
    projects,
    volume_name,
    volume_spec,
)
from dockerfs_fuse.model.swarm import Obj, Tree, unix_seconds
from dockerfs_fuse.model.users import LINK_DIRS, Users, network_users, users, with_links

_LISTS: Mapping[str, Lister] = {
    "images": api.list_images,
    "volumes": api.list_volumes,
    "networks": api.list_networks,
    "projects": api.list_project_containers,
}


class ObjectsCache(ListedKinds):
    """One engine's images, volumes, networks and projects under `top` in `table`."""

    lazy = True

    def __init__(
        self,
        name: str,
        source: DockerSource,
        table: InodeTable,
        top: Node,
        on_changes: Callable[[Changes], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name, source, table, top, on_changes, _LISTS, clock=clock)
        self._alias_names: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        # The cross links: one container list, asked when a link directory is read.
        self._user_list = Refresher(self._fetcher(api.list_users))
        self._users = Users()

    def _rebuild(self, kind: str) -> None:
        entries, refs, aliases = _entries(kind, self.objects[kind], self._users)
        self._alias_names[kind] = aliases
        self._publish({kind: entries}, {kind: refs})

    # -- cross links ----------------------------------------------------------------

    def lists_links(self, inode: int) -> bool:
        """Whether a directory is an image's or network's Containers/ or a
        volume's UsedBy/ (told by where it is: an object's directory may not
        be built yet, see `lazy`)."""
        node = self.table.get(inode) if inode in self.table else None
        owner = node.parent if node is not None else None
        kind_dir = owner.parent if owner is not None else None
        if node is None or kind_dir is None:
            return False
        kind = self.kind_of.get(kind_dir.inode)
        return kind is not None and LINK_DIRS.get(kind) == node.name

    def _kept(self, kind: str, found: list[Obj]) -> list[Obj]:
        # Docker lists images and volumes in Go's map order, new at each
        # answer: sorted, an unchanged list compares equal (refresh).
        return sorted(found, key=_stable_order)

    async def refresh_links(self) -> None:
        """List every container (one request) and rebuild the link directories."""
        # Compared by who uses what: the answer itself changes with every
        # call (a container's Status says how long it has been up).
        found = users(await self._user_list.get())
        if found == self._users:
            return
        self._users = found
        for kind in LINK_DIRS:
            self._rebuild(kind)

    def _aliases(self, kind: str) -> Mapping[str, str]:
        return self._alias_names[kind]

    def _may_name(self, name: str) -> bool:
        return len(name.encode()) <= NAME_MAX and name not in (".", "..")

    async def inspect(self, kind: str, ref: str) -> dict[str, Any]:
        """What `inspect.json` shows: one request per open."""
        if kind == "images":
            return await api.inspect_image(self.source, ref)
        if kind == "volumes":
            return await api.inspect_volume(self.source, ref)
        if kind == "networks":
            return await api.inspect_network(self.source, ref)
        raise NotFound(f"a {kind[:-1]} has no inspect.json")

    async def history(self, kind: str, ref: str) -> list[dict[str, Any]]:
        """What an image's `history.json` shows: one request per open."""
        if kind != "images":
            raise NotFound(f"a {kind[:-1]} has no history.json")
        return await api.image_history(self.source, ref)


def _entries(
    kind: str, found: list[Obj], used: Users
) -> tuple[dict[str, tuple[int, Tree | Deferred]], dict[str, str], dict[str, str]]:
    """(name -> (mtime, contents), name -> engine reference, alias -> name) of
    one list, with the links of the containers that use each object. An
    image's, volume's or network's contents are made when first asked for."""
    if kind == "images":
        images = [(image_id(i), i) for i in found]
        images = [(name, i) for name, i in images if name]
        return (
            {
                name: (image_created(i) * NS, _deferred(kind, i, used.images.get(name, ())))
                for name, i in images
            },
            {name: name for name, _ in images},
            image_aliases(i for _, i in images),
        )
    if kind == "volumes":
        volumes = [(volume_name(v), v) for v in found if v.get("Name")]
        volumes = [(name, v) for name, v in volumes if name]
        return (
            {
                name: (
                    _time(v, "CreatedAt"),
                    _deferred(kind, v, used.volumes.get(str(v["Name"]), ())),
                )
                for name, v in volumes
            },
            {name: str(v["Name"]) for name, v in volumes},
            {},
        )
    if kind == "networks":
        networks = [n for n in found if network_id(n)]
        names = network_names(networks)
        return (
            {
                names[network_id(n)]: (
                    _time(n, "Created"),
                    _deferred(
                        kind,
                        n,
                        network_users(used, network_id(n), str(n.get("Name") or "")),
                    ),
                )
                for n in networks
            },
            {names[network_id(n)]: network_id(n) for n in networks},
            network_aliases(networks),
        )
    by_project = projects(found)
    return (
        {p: (project_created(cs) * NS, project_spec(cs)) for p, cs in by_project.items()},
        {p: p for p in by_project},
        {},
    )


# How each kind's object directory is made; its shape (which entries are
# directories) never depends on the object, so its link count is known
# without making it.
_SPECS: dict[str, Callable[[Obj], Tree]] = {
    "images": image_spec,
    "volumes": volume_spec,
    "networks": network_spec,
}
SUBDIRS = {kind: subdirs_of(with_links(spec({}), kind, ())) for kind, spec in _SPECS.items()}


def _deferred(kind: str, obj: Obj, cids: Iterable[str]) -> Deferred:
    spec = _SPECS[kind]
    return Deferred(lambda: with_links(spec(obj), kind, cids), SUBDIRS[kind])


def _stable_order(obj: Obj) -> str:
    return str(obj.get("Id") or obj.get("ID") or obj.get("Name") or "")


def _time(obj: Obj, key: str) -> int:
    return unix_seconds(obj.get(key)) * NS
