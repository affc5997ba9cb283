"""Which paths the daemon would reach through its own mount.

The daemon must never wait on its own mount: a Docker socket, log file or 9P
socket reached through the mountpoint would make it serve a request by
making another one to itself. Such paths are refused before mounting.
"""

from __future__ import annotations

import os
import stat

MAX_SYMLINKS = 40  # as the kernel's path walk


def passes_through(path: str, directory: str) -> bool:
    """Whether resolving `path` enters `directory`, following symlinks as
    the kernel does. Once `directory` is our mount, opening such a path
    waits on ourselves. Comparing real paths is not enough: a symlink inside
    the directory may point outside it, and the walk still looks it up."""
    top = os.path.realpath(directory)

    def inside(p: str) -> bool:
        return p == top or p.startswith(top.rstrip("/") + "/")

    # Not os.path.abspath: it folds "a/.." without looking at what "a" is.
    pending = os.path.join(os.getcwd(), path).split("/")[::-1]
    current = "/"
    hops = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        if inside(candidate):
            return True
        try:
            is_link = stat.S_ISLNK(os.lstat(candidate).st_mode)
            target = os.readlink(candidate) if is_link else ""
        except OSError:
            is_link = False  # not there (yet): the rest of the path is plain names
        if not is_link:
            current = candidate
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            return False  # the kernel answers ELOOP; nothing would wait
        if target.startswith("/"):
            current = "/"
        pending.extend(target.split("/")[::-1])
    return inside(current)


def under_mountpoint(what: str, path: str, mountpoint: str) -> str:
    """The refusal for a path that passes through the mountpoint."""
    return (
        f"{what} {path} is reached through the mountpoint {mountpoint}: "
        "the daemon would block on its own mount"
    )
