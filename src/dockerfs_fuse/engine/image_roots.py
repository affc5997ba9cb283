"""Each image's root/ (`images/<id>/root`, a link into its `.live/root`): the
image's filesystem, read-only, read as a container's root/ is (files.py,
roots.py) from a helper container made from the image and never started
(helpers.py), which each request and each open file holds while it runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.helpers import Helpers
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.model.inodes import Node

PURPOSE = "image-root"
# The command a helper is made with (an image may have none); never run.
NEVER_RUN = ["/dockerfs-helper-never-started"]


def helper_body(image_id: str) -> dict[str, Any]:
    """The create request of an image's helper: no network, nothing to run."""
    return {
        "Image": f"sha256:{image_id}",
        "Cmd": NEVER_RUN,
        "NetworkDisabled": True,
        "HostConfig": {"NetworkMode": "none"},
    }


class ImageRoots:
    """One engine's images' root/ directories."""

    def __init__(self, objects: ObjectsCache, cache: EngineCache, helpers: Helpers) -> None:
        self.objects = objects
        self.cache = cache  # its ContainerFiles read the helpers' archives
        self.helpers = helpers

    def _image(self, root: Node) -> str:
        _kind, image_id = self.objects.locate(root)
        return image_id

    def held_now(self, root: Node) -> tuple[str, Callable[[], None]] | None:
        """The image's helper, held (call the second item to let go), if one exists now."""
        image_id = self._image(root)
        cid = self.helpers.acquire_now(PURPOSE, image_id)
        if cid is None:
            return None
        return cid, lambda: self.helpers.release(PURPOSE, image_id, cid)

    async def hold(self, root: Node) -> tuple[str, Callable[[], None]]:
        """The image's helper, made if need be, held (call the second item to let go)."""
        image_id = self._image(root)

        async def body() -> dict[str, Any]:
            return helper_body(image_id)

        cid = await self.helpers.acquire(PURPOSE, image_id, body)
        return cid, lambda: self.helpers.release(PURPOSE, image_id, cid)

    @contextlib.asynccontextmanager
    async def held(self, root: Node) -> AsyncIterator[str]:
        cid, release = await self.hold(root)
        try:
            yield cid
        finally:
            release()
