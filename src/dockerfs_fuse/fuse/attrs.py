"""What stat says of each node: type, mode, size, times, and how long the kernel may trust it."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pyfuse3

from dockerfs_fuse.engine.containers import ATTR_TIMEOUT
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.model.containers import LIVE, Special
from dockerfs_fuse.model.inodes import NS, Kind, Node

# Names and prefixes can move to another container.
ALIAS_TIMEOUT = 1.0
# The target of a container's `ctl`, `logs`... (model.containers.LIVE): fixed for its life.
_INTO_LIVE = f"{LIVE}/".encode()
# Under a container's root/ the kernel may trust entries and attributes this
# long: the container changes them without telling us.
ROOT_TIMEOUT = 1.0
# The block size stat and statfs report: a page.
BLOCK_SIZE = 4096


class Attributes:
    """Builds the attributes of nodes of `engines`' table.

    `err_size` is the size of an `err` file now (it changes with every
    refused write, and nothing invalidates it).
    """

    def __init__(self, engines: Engines, err_size: Callable[[Node], int]) -> None:
        self.engines = engines
        self._err_size = err_size
        # Nodes whose mode a view decides (a container's exec/ and its sessions).
        self.modes: dict[int, int] = {}
        # Nodes whose preferred I/O size (st_blksize) a view decides: a stream
        # read in larger pieces costs fewer requests (`cat` reads st_blksize).
        self.block_sizes: dict[int, int] = {}
        self.uid = os.getuid()
        self.gid = os.getgid()

    def of(self, node: Node) -> pyfuse3.EntryAttributes:
        if node.entry is not None:
            return self._under_root(node)
        engines = self.engines
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        cache = engines.cache_of(node)
        timeout = cache.attr_timeout if cache is not None else ATTR_TIMEOUT
        a.entry_timeout = a.attr_timeout = timeout
        if engines.is_top(node.inode):
            a.attr_timeout = min(timeout, ATTR_TIMEOUT)
        if node.kind is Kind.DIR:
            a.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
        elif node.kind is Kind.LINK:
            a.st_mode = pyfuse3.ModeT(stat.S_IFLNK | 0o777)
            if not node.data.startswith(_INTO_LIVE):  # those never lead elsewhere
                a.entry_timeout = a.attr_timeout = ALIAS_TIMEOUT
        elif node.special is Special.CTL:
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o200)
        elif engines.clones.of(node.inode) is not None:
            # Read back on the descriptor that wrote it: the mounting user's alone.
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o600)
        else:
            a.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
        a.st_mode = pyfuse3.ModeT(self.modes.get(node.inode, a.st_mode))
        a.st_nlink = node.nlink
        a.st_uid = self.uid
        a.st_gid = self.gid
        a.st_rdev = 0
        a.st_size = len(node.data) if node.kind is not Kind.DIR else 0
        logs_size = engines.polled_log_size(node) if node.special is Special.LOGS else None
        if logs_size is not None:
            # `tail -f` follows by polling this size: never let the kernel cache it.
            a.st_size = logs_size
            a.attr_timeout = 0
        if node.special is Special.ERR:
            a.st_size = self._err_size(node)
            a.attr_timeout = 0
        a.st_blksize = self.block_sizes.get(node.inode, BLOCK_SIZE)
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        if engines.is_top(node.inode) or engines.lists_on_read(node.inode):
            # With kernel caching each listing moves this mtime on; the ctime
            # stays, since GNU tar takes a directory whose ctime moved while it
            # read it for changed ("file changed as we read it", exit 1).
            a.st_atime_ns = a.st_ctime_ns = engines.mounted_ns
        if node.special is Special.ROOT:
            # As for the directories below it (see _under_root): tar checks ctime.
            a.st_atime_ns = a.st_ctime_ns = node.mtime_ns // NS * NS
        return a

    def _under_root(self, node: Node) -> pyfuse3.EntryAttributes:
        """A path under root/: its type, mode, owner, size and times as the engine says."""
        e = node.entry
        assert e is not None
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.inode)
        a.generation = 0
        a.entry_timeout = a.attr_timeout = ROOT_TIMEOUT
        a.st_mode = pyfuse3.ModeT(e.mode)
        a.st_nlink = node.nlink
        a.st_uid = e.uid
        a.st_gid = e.gid
        a.st_rdev = e.rdev
        a.st_size = e.size
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (e.size + 511) // 512
        # The mtime carries, below the second, the count of listings that
        # makes the kernel drop a cached one (listings.py). ctime stays
        # put: GNU tar takes a directory whose ctime moved while it read it for
        # changed ("file changed as we read it", exit 1).
        a.st_mtime_ns = node.mtime_ns
        a.st_atime_ns = a.st_ctime_ns = e.mtime * NS
        return a
