"""--view=engine: the `ctl` of an image, a volume, a network or a compose
project (engine/objects_ctl.py), and the `err` that keeps its last refusal."""

from __future__ import annotations

import logging

import pyfuse3

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.engine.objects_ctl import control
from dockerfs_fuse.fuse.errors import refusal_reason
from dockerfs_fuse.fuse.handles import Handle, HandleTable
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.model.ctl import BadCommand, Refusals

log = logging.getLogger(__name__)


class ObjectCtlHandle(Handle):
    """An open object `ctl`: each write is one command (model/objects_ctl.py)."""

    def __init__(
        self,
        objects: ObjectsCache,
        kind: str,
        ref: str,
        containers: EngineCache | None,
        refusals: Refusals,
        invalidator: Invalidator,
    ) -> None:
        self.objects = objects
        self.kind = kind
        self.ref = ref
        self.containers = containers
        self.refusals = refusals
        self.invalidator = invalidator

    async def write(self, off: int, buf: bytes) -> int:
        try:
            if off != 0:
                # As for a container's ctl: never part of a command.
                raise BadCommand(f"one command per open and write, at offset 0 (not {off})")
            try:
                done = await control(self.objects, self.kind, self.ref, buf, self.containers)
            finally:
                # What it changed (a refused project command may have changed
                # some) is dropped from the kernel's cache before the reply.
                await self.invalidator.told_kernel()
            log.info("ctl %s/%s: %s", self.kind, self.ref[:12], done)
            return len(buf)
        except Exception as exc:
            # The writer gets an errno; its `err` file says why.
            key = (self.objects.name, self.kind, self.ref)
            self.refusals.note(key, buf, refusal_reason(exc))
            raise


def open_object_ctl(
    handles: HandleTable,
    objects: ObjectsCache,
    kind: str,
    ref: str,
    containers: EngineCache | None,
    refusals: Refusals,
    invalidator: Invalidator,
) -> pyfuse3.FileInfo:
    handle = ObjectCtlHandle(objects, kind, ref, containers, refusals, invalidator)
    return pyfuse3.FileInfo(fh=handles.add(handle), direct_io=True)
