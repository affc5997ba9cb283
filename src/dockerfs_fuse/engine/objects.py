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
  `inspect.json` asks the engine once per open.

No event stream: a listing per read of the directory is what keeps these
fresh, and costs nothing while nobody looks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from dockerfs_fuse.docker import objects as api
from dockerfs_fuse.docker.errors import DockerProblem, NotFound
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.refresh import MissLimiter, Refresher
from dockerfs_fuse.model.containers import NAME_MAX
from dockerfs_fuse.model.inodes import NS, Changes, InodeTable, Node
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

log = logging.getLogger(__name__)

_LISTS: Mapping[str, Callable[[DockerSource], Awaitable[list[dict[str, Any]]]]] = {
    "images": api.list_images,
    "volumes": api.list_volumes,
    "networks": api.list_networks,
    "projects": api.list_project_containers,
}


class ObjectsCache:
    """One engine's images, volumes, networks and projects under `top` in `table`."""

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
        self.name = name
        self.source = source
        self.table = table
        self.top = top
        self._on_changes = on_changes
        self.dirs: dict[str, Node] = {kind: table.add_dir(kind, parent=top) for kind in KINDS}
        self.kind_of = {node.inode: kind for kind, node in self.dirs.items()}
        self.objects: dict[str, list[Obj]] = {kind: [] for kind in KINDS}
        # Directory name -> what the engine is asked about it, per kind.
        self._refs: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self._aliases: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self._refreshers = {kind: Refresher(self._fetcher(kind)) for kind in KINDS}
        self._misses = MissLimiter[tuple[str, str]](clock=clock)

    def _fetcher(self, kind: str) -> Callable[[], Awaitable[list[Obj]]]:
        call = _LISTS[kind]

        async def fetch() -> list[Obj]:
            # Docker lists images and volumes in Go's map order, new at each
            # answer: sorted, an unchanged list compares equal (refresh).
            return sorted(await call(self.source), key=_stable_order)

        return fetch

    # -- listings ------------------------------------------------------------------

    async def refresh_dir(self, inode: int) -> None:
        await self.refresh(self.kind_of[inode])

    async def refresh(self, kind: str) -> None:
        """List one kind again (one request) and rebuild its directory."""
        found = await self._refreshers[kind].get()
        if found == self.objects[kind]:
            return
        self.objects[kind] = found
        entries, refs, aliases = _entries(kind, found)
        changes = Changes()
        self.table.set_objects(self.dirs[kind], entries, changes, lazy=True)
        changes.removed += self.table.drop_aliases(self.dirs[kind]).removed
        self._refs[kind] = refs
        self._aliases[kind] = aliases
        # The kernel keeps a listing it cached until the directory's mtime moves.
        now = time.time_ns()
        for inode in changes.changed:
            node = self.table.get(inode) if inode in self.table else None
            if node is not None and node.is_dir:
                node.mtime_ns = max(now, node.mtime_ns + 1)
        if changes:
            self._on_changes(changes)

    # -- names ---------------------------------------------------------------------

    async def find(self, parent: Node, name: str) -> Node | None:
        """An entry of one of the four directories, or an unlisted alias (a tag,
        a network's ID); a name nobody listed lists its kind again, at most
        once a second per name."""
        kind = self.kind_of[parent.inode]
        node = self._lookup(kind, name)
        if node is not None or len(name.encode()) > NAME_MAX or name in (".", ".."):
            return node
        if not self._misses.may_ask((kind, name)):
            return None
        try:
            await self.refresh(kind)
        except DockerProblem as exc:
            log.debug("%s: lookup of %s/%s: %s", self.name, kind, name, exc)
            return None
        return self._lookup(kind, name)

    def _lookup(self, kind: str, name: str) -> Node | None:
        parent = self.dirs[kind]
        node = self.table.lookup(parent, name)
        if node is not None:
            return node
        target = self._aliases[kind].get(name)
        return self.table.link(name, target, parent) if target else None

    def locate(self, node: Node) -> tuple[str, str]:
        """(kind, what the engine is asked) of the object a node is inside of."""
        n: Node | None = node
        while n is not None and n.parent is not None and n.parent.inode not in self.kind_of:
            n = n.parent
        if n is None or n.parent is None or n.gone:
            raise NotFound("no longer listed")
        kind = self.kind_of[n.parent.inode]
        ref = self._refs[kind].get(n.name)
        if ref is None:
            raise NotFound(f"{kind}/{n.name} is no longer listed")
        return kind, ref

    async def inspect(self, kind: str, ref: str) -> dict[str, Any]:
        """What `inspect.json` shows: one request per open."""
        if kind == "images":
            return await api.inspect_image(self.source, ref)
        if kind == "volumes":
            return await api.inspect_volume(self.source, ref)
        if kind == "networks":
            return await api.inspect_network(self.source, ref)
        raise NotFound(f"a {kind[:-1]} has no inspect.json")


def _entries(
    kind: str, found: list[Obj]
) -> tuple[dict[str, tuple[int, Tree]], dict[str, str], dict[str, str]]:
    """(name -> (mtime, contents), name -> engine reference, alias -> name) of one list."""
    if kind == "images":
        images = [i for i in found if image_id(i)]
        return (
            {image_id(i): (image_created(i) * NS, image_spec(i)) for i in images},
            {image_id(i): image_id(i) for i in images},
            image_aliases(images),
        )
    if kind == "volumes":
        volumes = [v for v in found if volume_name(v) and v.get("Name")]
        return (
            {volume_name(v): (_time(v, "CreatedAt"), volume_spec(v)) for v in volumes},
            {volume_name(v): str(v["Name"]) for v in volumes},
            {},
        )
    if kind == "networks":
        networks = [n for n in found if network_id(n)]
        names = network_names(networks)
        return (
            {names[network_id(n)]: (_time(n, "Created"), network_spec(n)) for n in networks},
            {names[network_id(n)]: network_id(n) for n in networks},
            network_aliases(networks),
        )
    by_project = projects(found)
    return (
        {p: (project_created(cs) * NS, project_spec(cs)) for p, cs in by_project.items()},
        {p: p for p in by_project},
        {},
    )


def _stable_order(obj: Obj) -> str:
    return str(obj.get("Id") or obj.get("ID") or obj.get("Name") or "")


def _time(obj: Obj, key: str) -> int:
    return unix_seconds(obj.get(key)) * NS
