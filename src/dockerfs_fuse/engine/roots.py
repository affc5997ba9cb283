"""Each container's (and image's) root/ and each volume's data/ in the inode
table: what the engine's archive snapshots (engine/files.py) say of a path,
written into the table.

A lookup stats the path, a listing re-reads the directory, an open takes a
reader; whatever is found gone leaves the table, whatever is found enters it.
Each slow step has a `_now` twin that answers without a request or a wait
(a walk in progress) or says None, so that the adapter can make only the
slow ones interruptible.
"""

from __future__ import annotations

import contextlib
import posixpath
from collections.abc import AsyncIterator, Callable, Iterator

from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.files import ContainerFiles, FileReader
from dockerfs_fuse.engine.helper_roots import HelperRoots, NoHelper
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.files import Entry, NotThere, PathError
from dockerfs_fuse.model.inodes import Changes, Node

# A listing as the adapter serves it: names and the inodes they got.
Listing = list[tuple[str, int]]


def _nothing() -> None:
    """Letting go of a container's own root/: nothing is held."""


def in_root(node: Node) -> bool:
    """Whether a node is a container's root/ (an image's root/, a volume's
    data/) or under it."""
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

    def _where(self, node: Node) -> tuple[Node, str, HelperRoots | None]:
        """The root/ (or data/) a node is under, its path in the container that
        shows it, and the helpers that show it (None: a container's own root/)."""
        parts: list[str] = []
        while node.special is not Special.ROOT:
            if node.parent is None or node.gone:
                raise NotThere(node.name)
            parts.append(node.name)
            node = node.parent
        path = "/" + "/".join(reversed(parts))
        helpers = self.engines.helper_roots_of(node)
        if helpers is not None:
            path = helpers.path_in_helper(path)
        return node, path, helpers

    def _container(self, root: Node) -> tuple[EngineCache, str]:
        owner = self.engines.container_of(root)
        if owner is None:
            raise NotThere(root.name)
        return owner

    def path_of(self, node: Node) -> str:
        """A node's path in the container that shows it (root/ is "/")."""
        return self._where(node)[1]

    def tree_of(self, node: Node) -> Node:
        """The root/ (or data/) a node is under."""
        return self._where(node)[0]

    def writable(self, node: Node) -> bool:
        """Whether the tree a node is under may be changed: a container's
        root/ or a volume's data/, not an image's root/ (--view=engine)."""
        helpers = self._where(node)[2]
        return helpers is None or helpers.writable

    async def hold(self, node: Node) -> tuple[EngineCache, str, str, Callable[[], None]]:
        """The engine, container and path of a node, and the call that lets go
        of the helper container that shows it (made if need be) once done."""
        root, path, helpers = self._where(node)
        if helpers is None:
            return (*self._container(root), path, _nothing)
        cid, release = await helpers.hold(root)
        return helpers.cache, cid, path, release

    @contextlib.asynccontextmanager
    async def _located(self, node: Node) -> AsyncIterator[tuple[EngineCache, str, str]]:
        """The engine, container and path of a node, its helper held for the block."""
        cache, cid, path, release = await self.hold(node)
        try:
            yield cache, cid, path
        finally:
            release()

    @contextlib.contextmanager
    def _located_now(self, node: Node) -> Iterator[tuple[EngineCache, str, str] | None]:
        """_located() when no helper need be made: None for a tree without one now."""
        root, path, helpers = self._where(node)
        if helpers is None:
            yield (*self._container(root), path)
            return
        held = helpers.held_now(root)
        if held is None:
            yield None
            return
        try:
            yield helpers.cache, held[0], path
        finally:
            held[1]()

    async def lookup(self, parent: Node, name: str) -> Node | None:
        """The node for `name` in a directory under root/, as the engine has it now."""
        try:
            async with self._located(parent) as (cache, cid, path):
                entry = await cache.files.stat(cid, posixpath.join(path, name))
        except NoHelper:
            raise
        except (PathError, NotFound):
            self._apply(self.table.remove_entry(parent, name))
            return None
        (entry,) = self._shown(parent, [entry])
        node, changes = self.table.set_entry(parent, entry)
        self._apply(changes)
        return node

    def listing_now(self, node: Node) -> Listing | None:
        """A directory's listing if it is at hand (a walk goes on), else None."""
        try:
            with self._located_now(node) as located:
                if located is None:
                    return None
                cache, cid, path = located
                entries = cache.files.listing_now(cid, path)
        except (NotThere, NotFound):
            self._gone(node)
            raise
        return None if entries is None else self._listed(node, entries)

    async def listing(self, node: Node) -> Listing:
        """A directory re-read (engine/files.py says from where)."""
        try:
            async with self._located(node) as (cache, cid, path):
                entries = await cache.files.listing(cid, path)
        except (NotThere, NotFound):
            self._gone(node)
            raise
        return self._listed(node, entries)

    def _gone(self, node: Node) -> None:
        if node.parent is not None and node.entry is not None:
            self._apply(self.table.remove_entry(node.parent, node.name))

    def _shown(self, node: Node, entries: list[Entry]) -> list[Entry]:
        """Entries of a directory as its tree shows them (HelperRoots.shown)."""
        helpers = self._where(node)[2]
        return entries if helpers is None else [helpers.shown(e) for e in entries]

    def _listed(self, node: Node, entries: list[Entry]) -> Listing:
        entries = self._shown(node, entries)
        self._apply(self.table.set_listing(node, entries))
        children = node.children or {}
        return [(e.name, children[e.name].inode) for e in entries]

    def open_now(self, node: Node) -> RootFile | None:
        """A file under root/ if opening it needs no request, else None."""
        root, path, helpers = self._where(node)
        if helpers is None:
            cache, cid = self._container(root)
            reader = cache.files.open_now(cid, path)
            return None if reader is None else RootFile(cache.files, reader)
        held = helpers.held_now(root)
        if held is None:
            return None
        cid, release = held
        reader = helpers.cache.files.open_now(cid, path)
        if reader is None:
            release()
            return None
        return RootFile(helpers.cache.files, reader, on_close=release)

    async def open(self, node: Node, to_change: bool = False) -> RootFile:
        """A file's content for one open; `to_change`: the content a write
        starts from (see ContainerFiles.open_now)."""
        size = node.entry.size if node.entry is not None else -1
        # An open file holds its helper, if it has one, until it is closed.
        cache, cid, path, release = await self.hold(node)
        try:
            reader = await cache.files.open(cid, path, size, to_change)
        except BaseException:
            release()
            raise
        return RootFile(cache.files, reader, on_close=release)


class RootFile:
    """An open file under root/: its content, streamed or spooled."""

    def __init__(
        self,
        files: ContainerFiles,
        reader: FileReader,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self._files = files
        self._reader = reader
        self._on_close = on_close

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
        self._on_close()
        self._on_close = lambda: None
