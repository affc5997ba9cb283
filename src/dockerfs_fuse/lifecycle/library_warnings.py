"""Python warnings raised by libraries go to our log at debug level, never to the terminal.

A library's warning (cryptography's "DSA is deprecated" when asyncssh loads,
say) speaks to the developers who call that library, not to the person
mounting; printed, it turns a one-line start-up error into a dozen lines, and
a new release of any dependency can add one at any time. `-d` shows them.
Installed before the modules that load aiodocker are imported, so warnings
raised at import time are caught as well.
"""

from __future__ import annotations

import logging
import warnings
from typing import TextIO

log = logging.getLogger("dockerfs_fuse.warnings")


def _to_log(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    log.debug("%s:%d: %s: %s", filename, lineno, category.__name__, message)


def route_to_log() -> None:
    """Replace the printer, not the filters: which warnings are raised (and
    `-W error`) stays Python's business; only where they are shown changes."""
    warnings.showwarning = _to_log
