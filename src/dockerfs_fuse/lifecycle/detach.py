"""Detaching as sshfs does.

The parent has checked every argument; it forks before any thread exists,
the child does all the work up to a ready mount, then tells the parent
through a pipe, and only then does the parent exit 0, having printed
nothing but what the user must know. Any failure before that point is
reported by the parent as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable

from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.lifecycle.daemon_log import leave_terminal, log_destination
from dockerfs_fuse.lifecycle.preflight import security_warnings

log = logging.getLogger(__name__)

# Told once the mount serves (None) or could not be made whole (a message).
Ready = Callable[[str | None], None]


def detached(config: MountConfig, run: Callable[[Ready], int]) -> int:
    """Fork; the child runs `run` (which mounts and tells its Ready) and reports
    through a pipe; the parent waits for that.

    The child leaves the terminal at once (logs go to the log file, syslog,
    or a file under $XDG_STATE_HOME), so a detached start that fails prints
    the one line the parent gets through the pipe, and one that works prints
    only what the user must know: security warnings, and where the log goes
    when that is not where they would look."""
    log_fd, notes = log_destination(config)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        if log_fd is not None:
            os.close(log_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
            for line in [*(f"warning: {w}" for w in security_warnings(config)), *notes]:
                print(f"dockerfs-fuse: {line}", file=sys.stderr)
            return 0
        _, status = os.waitpid(pid, 0)
        raise MountError(message.strip() or f"daemon exited with status {status}")
    os.close(read_fd)
    os.setsid()

    reported = False

    def report(message: str) -> None:
        # Once only: after that, write_fd's number may belong to another file.
        nonlocal reported
        if reported:
            log.error("%s", message)
            return
        reported = True
        os.write(write_fd, message.encode())
        os.close(write_fd)

    def ready(error: str | None) -> None:
        if error is not None:
            report(error)
            return
        os.chdir("/")  # never hold a filesystem busy
        report("ok")

    code = 1
    try:
        leave_terminal(log_fd)
        code = run(ready)
    except MountError as exc:
        log.error("%s", exc)
        report(str(exc))
    except BaseException as exc:  # the parent must hear of it, or it waits forever
        log.exception("daemon failed")
        with contextlib.suppress(OSError):
            report(f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)
