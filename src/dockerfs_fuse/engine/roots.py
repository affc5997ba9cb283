"""Each container's root/ in the inode table: what the engine's archive
snapshots (engine/files.py) say of a path, written into the table.

A lookup stats the path, a listing re-reads the directory, an open takes a
reader; whatever is found gone leaves the table, whatever is found enters it.
Each slow step has a `_now` twin that answers without a request or a wait
(a walk in progress) or says None, so that the adapter can make only the
slow ones interruptible.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.files import ContainerFiles, FileReader
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.files import Entry, NotThere, PathError
from dockerfs_fuse.model.inodes import Changes, Node

# A listing as the adapter serves it: names and the inodes they got.
Listing = list[tuple[str, int]]


def in_root(node: Node) -> bool:
    """Whether a node is a container's root/ or under it."""
    return node.entry is not None or node.special is Special.ROOT


class ContainerRoots:
    """The root/ directories of every engine's containers."""

    def __init__(self, engines: Engines, on_changes: Callable[[Changes], None]) -> None:
        self.engines = engines
        self.table = engines.table
        self._on_changes = on_changes

    def _apply(self, changes: Changes) -> None:
        if changes:
            self._on_changes(changes)

    def locate(self, node: Node) -> tuple[EngineCache, str, str]:
        """The engine, container and path in it of a node under root/ (root/ is "/")."""
        parts: list[str] = []
        while node.special is not Special.ROOT:
            if node.parent is None or node.gone:
                raise NotThere(node.name)
            parts.append(node.name)
            node = node.parent
        owner = self.engines.container_of(node)
        if owner is None:
            raise NotThere(node.name)
        cache, cid = owner
        return cache, cid, "/" + "/".join(reversed(parts))

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node for `name` in a directory under root/, as the engine has it now."""
        cache, cid, path = self.locate(parent)
        try:
            entry = await cache.files.stat(cid, posixpath.join(path, name))
        except (PathError, NotFound):
            self._apply(self.table.remove_entry(parent, name))
            return None
        node, changes = self.table.set_entry(parent, entry)
        self._apply(changes)
        return node

    def listing_now(self, node: Node) -> Listing | None:
        """A directory's listing if it is at hand (a walk goes on), else None."""
        cache, cid, path = self.locate(node)
        try:
            entries = cache.files.listing_now(cid, path)
        except (NotThere, NotFound):
            self._gone(node)
            raise
        return None if entries is None else self._listed(node, entries)

    async def listing(self, node: Node) -> Listing:
        """A directory re-read (engine/files.py says from where)."""
        cache, cid, path = self.locate(node)
        try:
            entries = await cache.files.listing(cid, path)
        except (NotThere, NotFound):
            self._gone(node)
            raise
        return self._listed(node, entries)

    def _gone(self, node: Node) -> None:
        if node.parent is not None and node.entry is not None:
            self._apply(self.table.remove_entry(node.parent, node.name))

    def _listed(self, node: Node, entries: list[Entry]) -> Listing:
        self._apply(self.table.set_listing(node, entries))
        children = node.children or {}
        return [(e.name, children[e.name].inode) for e in entries]

    def open_now(self, node: Node) -> RootFile | None:
        """A file under root/ if opening it needs no request, else None."""
        cache, cid, path = self.locate(node)
        reader = cache.files.open_now(cid, path)
        return None if reader is None else RootFile(cache.files, reader)

    async def open(self, node: Node) -> RootFile:
        cache, cid, path = self.locate(node)
        size = node.entry.size if node.entry is not None else -1
        return RootFile(cache.files, await cache.files.open(cid, path, size))


class RootFile:
    """An open file under root/: its content, streamed or spooled."""

    def __init__(self, files: ContainerFiles, reader: FileReader) -> None:
        self._files = files
        self._reader = reader

    @property
    def size(self) -> int:
        """Its size as the snapshot that answered says."""
        return self._reader.entry.size

    def available(self, offset: int, size: int) -> bool:
        """Whether read(offset, size) would answer without waiting. Asking is
        reading: the container's snapshots serve on."""
        self._files.touch(self._reader.cid)
        return self._reader.available(offset, size)

    async def read(self, offset: int, size: int) -> bytes:
        return await self._reader.read(offset, size)

    def close(self) -> None:
        self._reader.close()
