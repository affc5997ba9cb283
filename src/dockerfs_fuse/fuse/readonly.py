"""The requests that would change the tree, refused in one place.

As hugelgupf/p9's templatefs composes refusals (ReadOnlyFile and the like)
instead of writing each out, `ReadOnly` answers every such request with
`refusal()` of the inodes it would change; the filesystem says which errno.
setattr is not here: truncating a `ctl` before writing it is allowed.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import pyfuse3

from dockerfs_fuse.fuse.errors import fail, guard

_Refuser = Callable[..., Coroutine[Any, Any, NoReturn]]


def _refuses(*inode_args: int) -> _Refuser:
    """A request handler that refuses; `inode_args` are the positions of the
    inodes it would change among its arguments."""

    async def refuse(self: ReadOnly, *args: Any) -> NoReturn:
        raise fail(self.refusal(*(args[i] for i in inode_args)))

    return guard(refuse)


class ReadOnly(pyfuse3.Operations):
    """Every request that would create, remove, rename, link or set an
    extended attribute, refused."""

    def refusal(self, *inodes: int) -> int:
        """The errno for a change of these inodes."""
        return errno.EACCES

    create = _refuses(0)  # (parent_inode, name, mode, flags, ctx)
    mknod = _refuses(0)  # (parent_inode, name, mode, rdev, ctx)
    mkdir = _refuses(0)  # (parent_inode, name, mode, ctx)
    symlink = _refuses(0)  # (parent_inode, name, target, ctx)
    link = _refuses(1)  # (inode, new_parent_inode, new_name, ctx)
    unlink = _refuses(0)  # (parent_inode, name, ctx)
    rmdir = _refuses(0)  # (parent_inode, name, ctx)
    rename = _refuses(0, 2)  # (parent_inode_old, name_old, parent_inode_new, ...)
    setxattr = _refuses(0)  # (inode, name, value, ctx)
    removexattr = _refuses(0)  # (inode, name, ctx)
