"""Kind directories listed on read: what the Swarm view (swarm.SwarmCache) and
the engine view's images, volumes, networks and projects (objects.ObjectsCache)
share.

One directory per kind under an engine's top directory, each holding one
directory per object of the last answer of that kind's list:

- reading a kind's directory lists that kind again (one request; readers
  that arrive meanwhile share it, Refresher);
- a name nobody listed lists its kind again, at most once a second per name
  (MissLimiter), and may be an unlisted alias (a tag, an ID) of a listed one;
- `locate` tells which object, and what to ask the engine about it, a node
  is inside of.

A subclass says how a kind's answer becomes its directories (`_rebuild`,
which hands the trees to `_publish`), and which aliases a kind has.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from dockerfs_fuse.docker.errors import DockerProblem, NotFound
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.refresh import MissLimiter, Refresher
from dockerfs_fuse.model.inodes import Changes, Deferred, InodeTable, Node
from dockerfs_fuse.model.swarm import Obj, Tree

log = logging.getLogger(__name__)

# One kind's list request.
Lister = Callable[[DockerSource], Awaitable[Sequence[Obj]]]
# One kind's directories: name -> (mtime in ns, contents, or how to make them).
Entries = Mapping[str, tuple[int, "Tree | Deferred"]]


class ListedKinds:
    """Kind directories under `top` in `table`, each listed again when read."""

    # What locate() says of an object no longer there: "no longer <where>".
    where = "listed"
    # Whether an object's directory is built only when something in it is
    # first asked for (InodeTable.set_objects): a first listing of 500 images
    # then builds none of their files.
    lazy = False

    def __init__(
        self,
        name: str,
        source: DockerSource,
        table: InodeTable,
        top: Node,
        on_changes: Callable[[Changes], None],
        lists: Mapping[str, Lister],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.source = source
        self.table = table
        self.top = top
        self._on_changes = on_changes
        self.dirs: dict[str, Node] = {kind: table.add_dir(kind, parent=top) for kind in lists}
        self.kind_of = {node.inode: kind for kind, node in self.dirs.items()}
        self.objects: dict[str, list[Obj]] = {kind: [] for kind in lists}
        # Directory name -> what the engine is asked about it, per kind.
        self._refs: dict[str, dict[str, str]] = {kind: {} for kind in lists}
        self._refreshers = {kind: Refresher(self._fetcher(call)) for kind, call in lists.items()}
        self._misses = MissLimiter[tuple[str, str]](clock=clock)

    def _fetcher(self, call: Lister) -> Callable[[], Awaitable[list[Obj]]]:
        async def fetch() -> list[Obj]:
            return list(await call(self.source))

        return fetch

    # -- what a subclass says ------------------------------------------------------

    def _kept(self, kind: str, found: list[Obj]) -> list[Obj]:
        """The entries of a list answer worth showing."""
        return found

    def _rebuild(self, kind: str) -> None:
        """Show `self.objects[kind]` (and what depends on it): calls _publish."""
        raise NotImplementedError

    def _aliases(self, kind: str) -> Mapping[str, str]:
        """Unlisted names of a kind's directory -> the listed name they lead to."""
        return {}

    def _may_name(self, name: str) -> bool:
        """Whether a missed name could be an object's, and so worth a listing."""
        raise NotImplementedError

    # -- listings ------------------------------------------------------------------

    async def refresh_dir(self, inode: int) -> None:
        await self.refresh(self.kind_of[inode])

    async def refresh(self, kind: str) -> None:
        """List one kind again (one request) and rebuild what shows it."""
        found = self._kept(kind, await self._refreshers[kind].get())
        if found == self.objects[kind]:
            return  # nothing changed: nothing to rebuild
        self.objects[kind] = found
        self._rebuild(kind)

    def _publish(self, trees: Mapping[str, Entries], refs: Mapping[str, dict[str, str]]) -> None:
        """Make each kind's directory list exactly its trees, keeping the
        inodes of names that stay, and tell `on_changes` what changed."""
        changes = Changes()
        for kind, entries in trees.items():
            self.table.set_objects(self.dirs[kind], entries, changes, lazy=self.lazy)
            changes.removed += self.table.drop_aliases(self.dirs[kind]).removed
        self._refs.update(refs)
        # The kernel keeps a listing it cached until the directory's mtime
        # moves (invalidating its inode alone does not drop it): a directory
        # whose entries changed shows the time of the change.
        now = time.time_ns()
        for inode in changes.changed:
            node = self.table.get(inode) if inode in self.table else None
            if node is not None and node.is_dir:
                node.mtime_ns = max(now, node.mtime_ns + 1)
        if changes:
            self._on_changes(changes)

    # -- names ---------------------------------------------------------------------

    async def find(self, parent: Node, name: str) -> Node | None:
        """An entry of a kind's directory, or an unlisted alias of one; a name
        nobody listed yet lists its kind again, at most once a second per name."""
        kind = self.kind_of[parent.inode]
        node = self._lookup(kind, name)
        if node is not None or not self._may_name(name):
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
        target = self._aliases(kind).get(name)
        return self.table.link(name, target, parent) if target else None

    def locate(self, node: Node) -> tuple[str, str]:
        """(kind, what the engine is asked) of the object a node is inside of;
        NotFound once it is gone."""
        n: Node | None = node
        while n is not None and n.parent is not None and n.parent.inode not in self.kind_of:
            n = n.parent
        if n is None or n.parent is None or n.gone:
            raise NotFound(f"no longer {self.where}")
        kind = self.kind_of[n.parent.inode]
        ref = self._refs[kind].get(n.name)
        if ref is None:
            raise NotFound(f"{kind}/{n.name} is no longer {self.where}")
        return kind, ref
