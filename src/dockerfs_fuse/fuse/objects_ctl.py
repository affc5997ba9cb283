"""--view=engine: the `ctl` of an image, a volume, a network or a compose
project (engine/objects_ctl.py), whose refusals its `err` keeps."""

from __future__ import annotations

import logging

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.engine.objects_ctl import control
from dockerfs_fuse.fuse.handles import CommandHandle
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.model.ctl import Refusals

log = logging.getLogger(__name__)


class ObjectCtlHandle(CommandHandle):
    """An open object `ctl`: each write is one command (model/objects_ctl.py);
    `containers` is the engine's containers/, which a project's command changes."""

    def __init__(
        self,
        objects: ObjectsCache,
        located: tuple[str, str],
        containers: EngineCache | None,
        refusals: Refusals,
        invalidator: Invalidator,
    ) -> None:
        super().__init__(refusals, (objects.name, *located))
        self.objects = objects
        self.kind, self.ref = located
        self.containers = containers
        self.invalidator = invalidator

    async def run(self, command: bytes) -> None:
        try:
            done = await control(self.objects, self.kind, self.ref, command, self.containers)
        finally:
            # What it changed (a refused project command may have changed
            # some) is dropped from the kernel's cache before the reply.
            await self.invalidator.told_kernel()
        log.info("ctl %s/%s: %s", self.kind, self.ref[:12], done)
