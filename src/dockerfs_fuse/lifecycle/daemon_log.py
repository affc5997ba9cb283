"""Where a detached daemon logs: --log-file, else syslog, else a file under
$XDG_STATE_HOME, so that a refused ctl write's reason or a warning is never
logged nowhere; and moving the daemon's stdio and log handlers there."""

from __future__ import annotations

import errno
import logging
import logging.handlers
import os
import socket
import sys
import time
from collections.abc import Mapping

from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.lifecycle.paths import passes_through

SYSLOG_SOCKET = "/dev/log"
# Where a detached daemon logs without --log-file and without syslog, under
# $XDG_STATE_HOME (default ~/.local/state), as the XDG base directory spec says.
STATE_DIR = "dockerfs-fuse"
STATE_LOG = "dockerfs-fuse.log"

FILE_LOG_FORMAT = "%(asctime)s dockerfs-fuse[%(process)d]: %(levelname)s %(name)s: %(message)s"
FILE_LOG_TIME = "%Y-%m-%dT%H:%M:%SZ"


def open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


def log_destination(config: MountConfig) -> tuple[int | None, list[str]]:
    """The log file a detached daemon writes (None: syslog), opened before
    anything is mounted, and what to tell the user about it.

    --log-file wins (checked already by check_log_file). Without it, syslog
    where a syslog daemon listens; else a file under $XDG_STATE_HOME.
    """
    if config.log_file is not None:
        try:
            return open_log(config.log_file), []
        except OSError as exc:
            raise MountError(
                f"--log-file {config.log_file}: cannot open for append: {exc.strerror}"
            ) from None
    if syslog_reachable():
        return None, []
    path = state_log_path(os.environ)
    try:
        if passes_through(path, config.mountpoint):
            raise OSError(errno.ELOOP, "it is reached through the mountpoint")
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = open_log(path)
    except OSError as exc:
        return None, [
            f"no syslog here ({SYSLOG_SOCKET}) and {path} cannot be written "
            f"({exc.strerror}): the daemon logs nowhere; use --log-file FILE"
        ]
    return fd, [f"no syslog here ({SYSLOG_SOCKET}): logging to {path}"]


def syslog_reachable(path: str = SYSLOG_SOCKET) -> bool:
    """Whether a syslog daemon reads `path`: a missing socket, or one nobody
    listens on, would swallow every line (SysLogHandler tries both kinds)."""
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.connect(path)
            return True
        except OSError:
            continue
    return False


def state_log_path(env: Mapping[str, str]) -> str:
    """$XDG_STATE_HOME/dockerfs-fuse/dockerfs-fuse.log; the spec says a relative
    XDG_STATE_HOME is ignored, and the default is ~/.local/state."""
    base = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, STATE_DIR, STATE_LOG)


def leave_terminal(log_fd: int | None) -> None:
    """A daemon keeps no terminal: stdio to /dev/null, logs to the log file
    if given, else to syslog where there is one."""
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.dup2(devnull if log_fd is None else log_fd, 2)
    os.close(devnull)
    if log_fd is not None:
        os.close(log_fd)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
            if log_fd is not None:  # a file, perhaps shared: say when, and which daemon
                stamped = logging.Formatter(FILE_LOG_FORMAT, FILE_LOG_TIME)
                stamped.converter = time.gmtime
                handler.setFormatter(stamped)
    if log_fd is None and syslog_reachable():
        syslog = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        syslog.setFormatter(logging.Formatter(f"dockerfs-fuse[{os.getpid()}]: %(message)s"))
        root.addHandler(syslog)
