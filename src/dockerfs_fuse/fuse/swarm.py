"""--swarm: a service's or node's `ctl` (and its `err`), every object's
`inspect`, and the source of a service's `logs`."""

from __future__ import annotations

import errno
import logging

import pyfuse3

from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.logs import LogSpools
from dockerfs_fuse.engine.swarm import SwarmCache
from dockerfs_fuse.fuse.containers import inspect_text
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import CommandHandle, HandleTable, file_info
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.ctl import Refusals
from dockerfs_fuse.model.inodes import Node

log = logging.getLogger(__name__)


class SwarmCtlHandle(CommandHandle):
    """An open service or node `ctl`: each write is one command (model/swarm_ctl.py)."""

    def __init__(self, swarm: SwarmCache, kind: str, oid: str, refusals: Refusals) -> None:
        super().__init__(refusals, (swarm.name, kind, oid))
        self.swarm = swarm
        self.kind = kind
        self.oid = oid

    async def run(self, command: bytes) -> None:
        action = await self.swarm.control(self.kind, self.oid, command)
        log.info("ctl %s %s: %s", self.kind, self.oid[:12], action)


class SwarmView:
    """The files of every engine's cluster that are not plain snapshots of the table."""

    def __init__(self, engines: Engines, handles: HandleTable, refusals: Refusals) -> None:
        self.engines = engines
        self.handles = handles
        self.refusals = refusals

    def _swarm_of(self, node: Node) -> SwarmCache:
        view = self.engines.swarm_of(node)
        if view is None:
            raise fail(errno.ENOENT)
        return view

    def refusal_key(self, node: Node) -> tuple[str, ...]:
        """Whose ctl a node belongs to (its `err`): a service's or a node's."""
        view = self._swarm_of(node)
        return (view.name, *view.locate(node))

    def open_ctl(self, node: Node) -> pyfuse3.FileInfo:
        view = self._swarm_of(node)
        kind, oid = view.locate(node)
        handle = SwarmCtlHandle(view, kind, oid, self.refusals)
        return file_info(self.handles.add(handle), direct_io=True)

    async def render(self, node: Node) -> bytes:
        """`inspect`: one API call per open."""
        view = self._swarm_of(node)
        kind, oid = view.locate(node)
        if node.special is Special.INSPECT:
            return inspect_text(await view.inspect(kind, oid))
        raise fail(errno.EIO)

    def log_source(self, node: Node) -> tuple[LogSpools, str]:
        """The spools and key of a service's `logs` or `logs.follow`."""
        view = self._swarm_of(node)
        return view.logs, view.log_key(node)

    def open_wait(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        raise fail(errno.ENOENT)  # no Swarm object has a `wait`
