"""Whether the kernel may cache our listings and pages: the pyfuse3 patch, detected.

Stock pyfuse3 cannot let the kernel cache directory listings: `opendir` can
only return a handle, and in the kernel's no-opendir mode `readdir` is not
told which directory is meant. `make` builds pyfuse3 with the patch in
patches/pyfuse3 that adds both; when that build failed (or a stock pyfuse3
is installed some other way) the filesystem runs exactly as without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import ModuleType

import pyfuse3

# Set (to anything but "" or "0") to run as on stock pyfuse3, patched or not:
# how the tests exercise both paths with one build.
STOCK_ENV = "DOCKERFS_STOCK_PYFUSE3"
# The kernel learnt to let OPENDIR be answered with ENOSYS (no-opendir mode,
# which also caches every listing) in Linux 5.1.
MIN_KERNEL = (5, 1)


@dataclass(frozen=True)
class Support:
    enabled: bool
    why: str  # one line for the start-up log


def patched(module: ModuleType = pyfuse3) -> bool:
    """The patch's two additions: FileInfo.cache_readdir and Operations.pass_inode."""
    return hasattr(module.FileInfo(), "cache_readdir") and hasattr(module.Operations, "pass_inode")


def noflush(environ: Mapping[str, str] = os.environ, module: ModuleType = pyfuse3) -> bool:
    """Whether an open may tell the kernel to send no FLUSH at close: the
    third patch's FileInfo.noflush (ignored by a libfuse older than 3.11 or
    a Linux older than 5.16, which send FLUSH as before). Off under STOCK_ENV."""
    if environ.get(STOCK_ENV, "") not in ("", "0"):
        return False
    return hasattr(module.FileInfo(), "noflush")


def kernel_version(release: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def detect(
    environ: Mapping[str, str] = os.environ,
    module: ModuleType = pyfuse3,
    release: str | None = None,
) -> Support:
    if environ.get(STOCK_ENV, "") not in ("", "0"):
        return Support(False, f"off: {STOCK_ENV} is set")
    version = getattr(module, "__version__", "?")
    if not patched(module):
        return Support(False, f"off: pyfuse3 {version} is the stock release (see patches/pyfuse3)")
    release = release if release is not None else os.uname().release
    if kernel_version(release) < MIN_KERNEL:
        return Support(False, f"off: Linux {release} has no no-opendir mode (5.1 or newer)")
    return Support(True, f"on: pyfuse3 {version}")
