"""Each volume's data/ (`volumes/<name>/data`, a link into its `.live/data`):
the volume's files, read and written as a container's root/ is (files.py,
roots.py, writes.py), through a helper container made with the volume
mounted at MOUNT_AT and never started (helper_roots.py).

Nothing runs in the helper, so any image on the engine will do: the
smallest (then the lowest ID), asked of the engine when a helper is made.
With no image on the engine there is no helper, and none is pulled: data/
fails EIO and the log says why. A stopped container has no exec, so what
only a tool in the container can do (rm, rmdir, mv, chmod, chown, touch of
an unchanged file) is EPERM here, as on a stopped container's root/.
"""

from __future__ import annotations

import logging
from typing import Any

from dockerfs_fuse.docker import objects as api
from dockerfs_fuse.engine.helper_roots import NEVER_RUN, HelperRoots, NoHelper
from dockerfs_fuse.engine.helpers import KEEP_VOLUMES_LABEL

log = logging.getLogger(__name__)

PURPOSE = "volume-data"
# Where the helper has the volume.
MOUNT_AT = "/dockerfs-volume"


def helper_image(images: list[dict[str, Any]]) -> str | None:
    """The image a volume's helper is made from: the smallest, then the lowest ID."""
    found = [
        (size if isinstance(size := i.get("Size"), int) else 0, str(i.get("Id") or ""))
        for i in images
    ]
    found = [f for f in found if f[1]]
    return min(found)[1] if found else None


def helper_body(image: str, volume: str) -> dict[str, Any]:
    """The create request of a volume's helper: the volume mounted as it is
    (nothing of the image copied into it), no network, nothing to run.

    Its own root filesystem is read-only: an upload whose path resolves out
    of the volume (a directory another container replaced by a link to
    `/var/log` since the kernel cached it) is refused, EROFS, instead of
    landing in the helper's layer and going with it. And the volume stays
    when the helper goes (`KEEP_VOLUMES_LABEL`)."""
    return {
        "Image": image,
        "Cmd": NEVER_RUN,
        "NetworkDisabled": True,
        "Labels": {KEEP_VOLUMES_LABEL: "1"},
        "HostConfig": {
            "NetworkMode": "none",
            "ReadonlyRootfs": True,
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": volume,
                    "Target": MOUNT_AT,
                    "VolumeOptions": {"NoCopy": True},
                }
            ],
        },
    }


class VolumeData(HelperRoots):
    """One engine's volumes' data/ directories."""

    purpose = PURPOSE
    base = MOUNT_AT
    writable = True

    async def body(self, of: str) -> dict[str, Any]:
        source = self.objects.source
        # Asked first: a create that names a volume the engine no longer has
        # would make a new, empty one of that name.
        await api.inspect_volume(source, of)
        image = helper_image(await api.list_images(source))
        if image is None:
            log.warning(
                "%s: volumes/%s/data: no image on the engine to make its helper container "
                "from (none is pulled)",
                self.objects.name,
                of[:80],
            )
            raise NoHelper(f"volume {of[:80]}: no image for a helper container")
        return helper_body(image, of)
