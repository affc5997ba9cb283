"""--view=engine: what an image's, volume's or network's files show that is not
a snapshot of the table: `inspect.json` and an image's `history.json`, one
request per open; and the `ctl` of each object (objects_ctl.py)."""

from __future__ import annotations

import errno

import pyfuse3

from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.logs import LogSpools
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.fuse.containers import inspect_text
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import HandleTable, file_info
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.objects_ctl import ObjectCtlHandle
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.ctl import Refusals
from dockerfs_fuse.model.inodes import Node


class ObjectsView:
    """The files of every engine's images, volumes and networks that are made when opened."""

    def __init__(
        self, engines: Engines, handles: HandleTable, refusals: Refusals, invalidator: Invalidator
    ) -> None:
        self.engines = engines
        self.handles = handles
        self.refusals = refusals
        self.invalidator = invalidator

    def _objects_of(self, node: Node) -> ObjectsCache:
        objects = self.engines.objects_of(node)
        if objects is None:
            raise fail(errno.ENOENT)
        return objects

    def refusal_key(self, node: Node) -> tuple[str, ...]:
        objects = self._objects_of(node)
        return (objects.name, *objects.locate(node))

    def open_ctl(self, node: Node) -> pyfuse3.FileInfo:
        objects = self._objects_of(node)
        located = objects.locate(node)
        # The engine's containers/ beside, which a project's command changes.
        beside = self.engines.table.lookup(objects.top, "containers")
        containers = self.engines.caches.get(beside.inode) if beside is not None else None
        handle = ObjectCtlHandle(objects, located, containers, self.refusals, self.invalidator)
        return file_info(self.handles.add(handle), direct_io=True)

    async def render(self, node: Node) -> bytes:
        objects = self._objects_of(node)
        kind, ref = objects.locate(node)
        if node.special is Special.INSPECT:
            return inspect_text(await objects.inspect(kind, ref))
        if node.special is Special.HISTORY:
            return inspect_text(await objects.history(kind, ref))
        raise fail(errno.EIO)

    def log_source(self, node: Node) -> tuple[LogSpools, str]:
        raise fail(errno.ENOENT)  # nothing here has logs

    def open_wait(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        raise fail(errno.ENOENT)  # nothing here has a `wait`
