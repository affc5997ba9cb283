"""A container's own files: `ctl` (and its `err`), `inspect`, `top`, `stats`,
the source of its `logs`, and its `wait`.

The Swarm view (swarm.py) answers the same questions for services, nodes
and tasks; which of the two a node belongs to is the dispatcher's question.
"""

from __future__ import annotations

import errno
import json
import logging

import pyfuse3

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.logs import LogSpools
from dockerfs_fuse.fuse.errors import fail
from dockerfs_fuse.fuse.handles import CommandHandle, HandleTable, file_info
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.logs import Followers
from dockerfs_fuse.fuse.wait import open_wait
from dockerfs_fuse.model.containers import Special
from dockerfs_fuse.model.ctl import Refusals, parse_command
from dockerfs_fuse.model.inodes import Node

log = logging.getLogger(__name__)


def inspect_text(info: object) -> bytes:
    """An `inspect` file: the engine's answer as indented JSON."""
    return (json.dumps(info, indent=4, ensure_ascii=False) + "\n").encode()


class CtlHandle(CommandHandle):
    """An open container `ctl`: each write is one command (model/ctl.py)."""

    def __init__(
        self, cache: EngineCache, cid: str, refusals: Refusals, invalidator: Invalidator
    ) -> None:
        super().__init__(refusals, (cache.name, cid))
        self.cache = cache
        self.cid = cid
        self.invalidator = invalidator

    async def run(self, command: bytes) -> None:
        parsed = parse_command(command)
        log.info("ctl %s: %s %s", self.cid[:12], parsed.action, parsed.params or "")
        await self.cache.control(self.cid, parsed)
        await self.invalidator.told_kernel()  # `cat State` right after `stop` reads `exited`


class ContainerView:
    """The files of every engine's containers that are not plain snapshots of the table."""

    def __init__(
        self,
        engines: Engines,
        handles: HandleTable,
        refusals: Refusals,
        invalidator: Invalidator,
        followers: Followers,
    ) -> None:
        self.engines = engines
        self.handles = handles
        self.refusals = refusals
        self.invalidator = invalidator
        self.followers = followers

    def container_of(self, node: Node) -> tuple[EngineCache, str]:
        """The engine and container ID of a node inside a container directory."""
        owner = self.engines.container_of(node)
        if owner is None:
            raise fail(errno.ENOENT)
        return owner

    def refusal_key(self, node: Node) -> tuple[str, ...]:
        """Whose ctl a node belongs to (its `err`)."""
        cache, cid = self.container_of(node)
        return (cache.name, cid)

    def open_ctl(self, node: Node) -> pyfuse3.FileInfo:
        cache, cid = self.container_of(node)
        handle = CtlHandle(cache, cid, self.refusals, self.invalidator)
        return file_info(self.handles.add(handle), direct_io=True)

    async def render(self, node: Node) -> bytes:
        """`inspect`, `top` or `stats`: one API call per open, never per read (lxcfs's model)."""
        cache, cid = self.container_of(node)
        if node.special is Special.INSPECT:
            return inspect_text(await cache.inspect(cid))
        if node.special is Special.TOP:
            return await cache.top_text(cid)
        if node.special is Special.STATS:
            return await cache.stats_text(cid)
        raise fail(errno.EIO)

    def log_source(self, node: Node) -> tuple[LogSpools, str]:
        """The spools and key of a `logs` or `logs.follow` node's log."""
        cache, cid = self.container_of(node)
        return cache.logs, cid

    def open_wait(self, node: Node, pid: int) -> pyfuse3.FileInfo:
        cache, cid = self.container_of(node)
        waits = self.engines.exit_waits
        return open_wait(self.handles, self.followers, waits, cache, cid, pid)
