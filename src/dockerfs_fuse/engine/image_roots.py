"""Each image's root/ (`images/<id>/root`, a link into its `.live/root`): the
image's filesystem, read-only, read as a container's root/ is (files.py,
roots.py) from a helper container made from the image and never started
(helper_roots.py)."""

from __future__ import annotations

from typing import Any

from dockerfs_fuse.engine.helper_roots import NEVER_RUN, HelperRoots

PURPOSE = "image-root"


def helper_body(image_id: str) -> dict[str, Any]:
    """The create request of an image's helper: no network, nothing to run."""
    return {
        "Image": f"sha256:{image_id}",
        "Cmd": NEVER_RUN,
        "NetworkDisabled": True,
        "HostConfig": {"NetworkMode": "none"},
    }


class ImageRoots(HelperRoots):
    """One engine's images' root/ directories."""

    purpose = PURPOSE

    async def body(self, of: str) -> dict[str, Any]:
        return helper_body(of)
