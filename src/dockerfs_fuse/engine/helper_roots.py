"""What an image's root/ and a volume's data/ share: a tree read (and, for a
volume, written) as a container's root/ is (files.py, roots.py, writes.py),
through a helper container (helpers.py) that each request, each open file
and each file being written holds while it needs it.

A subclass says what the helper is for (`purpose`), what it shows (`of`, a
label's value), how to make one (`body`), where in the helper the tree
begins (`base`), and whether the mounting user may change it (`writable`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from dockerfs_fuse.engine.containers import EngineCache
from dockerfs_fuse.engine.helpers import Helpers
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.model.files import Entry, PathError, contained_target
from dockerfs_fuse.model.inodes import Node

# The command a helper is made with (its image may have none); never run.
NEVER_RUN = ["/dockerfs-helper-never-started"]


class NoHelper(PathError):
    """No helper can be made here (an engine with no image): EIO, never a
    missing name, whatever the request."""


# What a held helper is: its ID, and the call that lets go of it.
Held = tuple[str, Callable[[], None]]


class HelperRoots:
    """One engine's trees of one kind (images' root/, volumes' data/)."""

    purpose = ""
    # The tree's top in the helper ("" for its own "/").
    base = ""
    writable = False

    def __init__(self, objects: ObjectsCache, cache: EngineCache, helpers: Helpers) -> None:
        self.objects = objects
        self.cache = cache  # its ContainerFiles read the helpers' archives
        self.helpers = helpers

    def _of(self, root: Node) -> str:
        """What the helper of this tree shows (an image's ID, a volume's name)."""
        _kind, ref = self.objects.locate(root)
        return ref

    async def body(self, of: str) -> dict[str, Any]:
        """The create request of a helper that shows `of`."""
        raise NotImplementedError

    def path_in_helper(self, path: str) -> str:
        """The helper's path of a path in the tree ("/" is the tree's top)."""
        if not self.base:
            return path
        return self.base if path == "/" else self.base + path

    def shown(self, entry: Entry) -> Entry:
        """An entry as the tree shows it: a symlink's target kept within the
        tree, not only within the helper. Below a base, the target the
        engine's snapshot kept within the helper's "/" is kept again within
        the tree's top (an absolute one leads from there), so that no link
        in a volume climbs out of data/ into the mount (a `ctl` beside it)."""
        if not self.base or not entry.link or not entry.path.startswith(self.base + "/"):
            return entry
        link = contained_target(entry.path.removeprefix(self.base), entry.link)
        return dataclasses.replace(entry, link=link, size=len(link))

    def held_now(self, root: Node) -> Held | None:
        """The tree's helper, held, if one exists now."""
        of = self._of(root)
        cid = self.helpers.acquire_now(self.purpose, of)
        if cid is None:
            return None
        return cid, lambda: self.helpers.release(self.purpose, of, cid)

    async def hold(self, root: Node) -> Held:
        """The tree's helper, made if need be, held."""
        of = self._of(root)

        async def body() -> dict[str, Any]:
            return await self.body(of)

        cid = await self.helpers.acquire(self.purpose, of, body)
        return cid, lambda: self.helpers.release(self.purpose, of, cid)
