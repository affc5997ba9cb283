"""The requests that would change the tree, refused in one place.

As hugelgupf/p9's templatefs composes refusals (ReadOnlyFile and the like)
instead of writing each out, `ReadOnly` answers every such request with
`refusal()` of the inodes it would change; the filesystem says which errno.
setattr is not here (truncating a `ctl` before writing it is allowed), nor
are create, mkdir, symlink, unlink, rmdir and rename, which a container's
root/ does (operations.py refuses them elsewhere).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

import pyfuse3

from dockerfs_fuse.fuse.errors import fail, guard

_Refuser = Callable[..., Coroutine[Any, Any, NoReturn]]


def _refuses(*inode_args: int, xattr: bool = False) -> _Refuser:
    """A request handler that refuses; `inode_args` are the positions of the
    inodes it would change among its arguments; `xattr`: an extended
    attribute's change."""

    async def refuse(self: ReadOnly, *args: Any) -> NoReturn:
        raise fail(self.refusal(*(args[i] for i in inode_args), xattr=xattr))

    return guard(refuse)


class ReadOnly(pyfuse3.Operations):
    """Every request that would make a node, a hard link or an extended
    attribute, refused."""

    def refusal(self, *inodes: int, xattr: bool = False) -> int:
        """The errno for a change of these inodes."""
        return errno.EACCES

    mknod = _refuses(0)  # (parent_inode, name, mode, rdev, ctx)
    link = _refuses(1)  # (inode, new_parent_inode, new_name, ctx)
    setxattr = _refuses(0, xattr=True)  # (inode, name, value, ctx)
    removexattr = _refuses(0, xattr=True)  # (inode, name, ctx)
