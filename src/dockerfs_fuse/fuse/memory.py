"""Freed memory given back to the system, where the C library can.

When the kernel forgets a walk of thousands of containers, the inode table
lets go of their nodes (model/inodes.py). Python returns its own arenas as
they empty, but the larger blocks come from the C library's heap, which
keeps freed pages mapped unless asked to give them back (glibc's
`malloc_trim`). Elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def give_back() -> None:
    """Return the C heap's free pages to the system (a few milliseconds)."""
    if _TRIM is not None:
        try:
            _TRIM(0)
        except OSError as exc:
            log.debug("malloc_trim: %s", exc)
