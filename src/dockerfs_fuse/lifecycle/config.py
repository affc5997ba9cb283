"""What a mount is asked to be, and the one kind of error start-up reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dockerfs_fuse.docker.endpoints import Endpoint

# A mountpoint given as an open /dev/fuse descriptor, already mounted:
# mount.fuse3 -o drop_privileges mounts itself and passes /dev/fd/N
# (libfuse >= 3.3 serves such a descriptor in fuse_session_mount).
FD_MOUNTPOINT = re.compile(r"/dev/fd/(\d{1,9})")


class MountError(Exception):
    """A problem to report as one line before anything is mounted."""


@dataclass
class MountConfig:
    mountpoint: str
    # Empty: the engine the docker CLI would use (see endpoints).
    endpoints: list[Endpoint] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    fuse_options: list[str] = field(default_factory=list)
    show_all: bool = False
    # What each engine's directory shows (engine.engines.VIEWS): its
    # containers, the whole engine, or the Swarm cluster it manages.
    view: str = "containers"
    log_file: str | None = None
    # Re-export the mount over 9P on these dial strings (the dockerfs-9p shim).
    ninep: list[str] = field(default_factory=list)
    ninep_allow_control: bool = False
    # Mount over a directory that holds files (hiding them while mounted).
    nonempty: bool = False
    # What mount tables show: SOURCE fuse.SUBTYPE (mount.fuse3 runs SUBTYPE for fstab).
    fsname: str = "dockerfs-fuse"
    subtype: str = "dockerfs-fuse"
