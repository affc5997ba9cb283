"""Every argument checked before Docker is asked or anything is mounted.

Nothing here contacts Docker or mounts, so a mistake costs one line on
stderr and exit 1, whatever it is. A path the daemon would reach through its
own mount is refused here too (see paths.py).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import signal
import socket
import stat
import time

from dockerfs_fuse.docker.endpoints import Endpoint, EndpointError, default_endpoint
from dockerfs_fuse.lifecycle import options
from dockerfs_fuse.lifecycle.config import FD_MOUNTPOINT, MountConfig, MountError
from dockerfs_fuse.lifecycle.daemon_log import open_log
from dockerfs_fuse.lifecycle.paths import passes_through, under_mountpoint
from dockerfs_fuse.ninep.cli import Dial, parse_dial


def check_config(config: MountConfig) -> None:
    """Raise a MountError naming the first argument that is wrong.

    Nothing here contacts Docker or mounts, so a mistake costs one line on
    stderr and exit 1, whatever it is. A new argument adds its check here.
    """
    check_mountpoint(config.mountpoint)
    try:
        targets = config.endpoints or [default_endpoint(os.environ)]
    except EndpointError as exc:
        raise MountError(str(exc)) from None
    for endpoint in targets:
        check_docker_endpoint(endpoint, config.mountpoint)
    check_fuse_options(config.fuse_options)
    if config.log_file is not None:
        check_log_file(config.log_file, config.mountpoint)
    if config.ninep and FD_MOUNTPOINT.fullmatch(config.mountpoint):
        raise MountError("--9p needs the mountpoint's path; it cannot serve a /dev/fd/N mount")
    for dial in config.ninep:
        check_ninep_dial(dial, config.mountpoint)
    if not config.nonempty:
        # Last: a more specific refusal (a socket reached through it) names its cause.
        check_empty(config.mountpoint)


def check_mountpoint(path: str) -> None:
    if not path:
        raise MountError("MOUNTPOINT is empty")
    if FD_MOUNTPOINT.fullmatch(path):
        _check_fuse_fd(path)
        return
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: is the fuse kernel module loaded?")
    problem = _probe_mountpoint(path)
    if problem == errno.ETIMEDOUT:
        raise MountError(
            f"{path}: the mount there does not answer; clear it with: fusermount3 -u -z {path}"
        )
    if problem == errno.ENOTCONN:
        raise MountError(
            f"{path}: dead {_mount_kind(path)} mount (Transport endpoint is not connected); "
            f"clear it with: fusermount3 -u {path}"
        )
    if problem == errno.ENOENT:
        raise MountError(f"mountpoint {path} does not exist")
    if problem:
        raise MountError(f"mountpoint {path}: {os.strerror(problem)}")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (unmount it with fusermount3 -u)")


def check_empty(path: str) -> None:
    """A mount hides what the directory holds until it is unmounted: refuse,
    unless asked (-o nonempty), rather than make files seem to vanish."""
    if FD_MOUNTPOINT.fullmatch(path):
        return
    try:
        with os.scandir(path) as entries:
            first = next(entries, None)
    except OSError as exc:
        raise MountError(f"mountpoint {path}: {exc.strerror}") from None
    if first is not None:
        raise MountError(
            f"mountpoint {path} is not empty ({first.name!r} and maybe more would be hidden); "
            "empty it, or mount over it anyway with -o nonempty"
        )


def _check_fuse_fd(path: str) -> None:
    match = FD_MOUNTPOINT.fullmatch(path)
    assert match is not None
    try:
        st = os.fstat(int(match.group(1)))
    except OSError:
        raise MountError(f"{path}: no such open file descriptor") from None
    if not stat.S_ISCHR(st.st_mode):
        raise MountError(f"{path} is not an open /dev/fuse (mount.fuse3 -o drop_privileges)")


PROBE_SECONDS = 5.0


def _probe_mountpoint(path: str) -> int:
    """The errno of stat and statfs on `path` (0 if both work), asked in a child
    process: a hung FUSE mount there would otherwise hang us (ETIMEDOUT, and
    the child is killed). statfs because a dead FUSE mount answers stat from
    the kernel's attribute cache for a while, but never answers statfs."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.stat(path)
            os.statvfs(path)
        except OSError as exc:
            code = exc.errno or errno.EIO
        os._exit(code)
    deadline = time.monotonic() + PROBE_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)  # a fatal signal ends a wait on FUSE
    os.waitpid(pid, 0)
    return errno.ETIMEDOUT


def _mount_kind(path: str) -> str:
    """How mountinfo calls the mount at `path`: ours (fuse.dockerfs-fuse) is "dockerfs-fuse"."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return "FUSE"
    kind = "FUSE"
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 4 and _unescape_mountinfo(parts[4]) == path and rest:
            fstype = rest.split()[0]
            kind = fstype.removeprefix("fuse.") if fstype != "fuse" else "FUSE"
    return kind


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# What libfuse 3 accepts at fuse_session_new (its low-level and mount options),
# from the -o table (options.py). Anything else libfuse would refuse only after
# Docker was asked, with a message of its own; an option that a given libfuse
# version lacks is still one line, with libfuse's message, when mounting (see
# init_fuse in mount.py).
FUSE_FLAGS = options.LIBFUSE_FLAGS
FUSE_NUMBERS = options.LIBFUSE_NUMBERS
FUSE_TEXTS = options.LIBFUSE_TEXTS


def check_fuse_options(options: list[str]) -> None:
    """Each `-o` option must be one libfuse knows, with a value of the right kind."""
    seen = set()
    for opt in (o for group in options for o in group.split(",") if o):
        name, has_value, value = opt.partition("=")
        if name in FUSE_NUMBERS and not (has_value and value.isdigit()):
            raise MountError(f"-o {opt}: {name} takes a number ({name}=N)")
        if name in FUSE_TEXTS and not value:
            raise MountError(f"-o {opt}: {name} takes a value ({name}=...)")
        if name in FUSE_FLAGS and has_value:
            raise MountError(f"-o {opt}: {name} takes no value")
        if name not in FUSE_FLAGS | FUSE_NUMBERS | FUSE_TEXTS:
            raise MountError(f"-o {opt}: unknown FUSE mount option (the README lists them)")
        seen.add(name)
    if {"allow_other", "allow_root"} <= seen:
        raise MountError("-o allow_other and allow_root exclude each other")


def check_log_file(path: str, mountpoint: str) -> None:
    """It must be writable now: a detached daemon opens it before mounting."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise MountError(f"--log-file {path}: directory {directory} does not exist")
    if passes_through(path, mountpoint):
        raise MountError(under_mountpoint("--log-file", path, mountpoint))
    try:
        os.close(open_log(path))
    except OSError as exc:
        raise MountError(f"--log-file {path}: cannot open for append: {exc.strerror}") from None


def check_ninep_dial(text: str, mountpoint: str) -> None:
    """Parsed by the shim's own parser; the address must be usable now, since
    the shim only starts once the mount serves."""
    try:
        dial = parse_dial(text)
    except ValueError as exc:
        raise MountError(f"--9p: {exc}") from None
    if dial.network == "unix":
        path = os.path.abspath(dial.address)
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise MountError(f"--9p {text}: directory {directory} does not exist")
        if passes_through(path, mountpoint):
            raise MountError(under_mountpoint("--9p socket", path, mountpoint))
        if os.path.lexists(path) and not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise MountError(f"--9p {text}: {path} exists and is not a socket")
    else:
        _check_can_listen(text, dial)


def _check_can_listen(text: str, dial: Dial) -> None:
    """Bind and close at once: a port in use or an address not ours is found now."""
    family = socket.AF_INET6 if ":" in dial.address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((dial.address, dial.port))
    except OSError as exc:
        raise MountError(f"--9p {text}: cannot listen there: {exc.strerror or exc}") from None


def check_docker_endpoint(endpoint: Endpoint, mountpoint: str) -> None:
    """Refused rather than opened early: the client opens new connections
    whenever it needs them (the event stream, parallel requests, reconnects)."""
    if endpoint.scheme == "unix":
        path = endpoint.url.removeprefix("unix://")
        if passes_through(path, mountpoint):
            raise MountError(under_mountpoint("the Docker socket", path, mountpoint))


def security_warnings(config: MountConfig) -> list[str]:
    """What the user must hear before the daemon leaves the terminal: who else
    gets in. Printed by the detaching parent, and logged once mounted."""
    warnings = []
    for text in config.ninep:
        dial = parse_dial(text)
        if dial.network != "tcp":
            continue  # a socket file, 0600
        if config.ninep_allow_control:
            warnings.append(
                f"--9p-allow-control on {text}: every local user who connects can write "
                "ctl files, that is, control Docker (root-equivalent); prefer unix!PATH "
                "in a directory only you can enter"
            )
        if not _loopback(dial.address):
            warnings.append(
                f"--9p {text} is reachable from other machines: anyone who connects "
                "reads every container's files, without authentication"
            )
    return warnings


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything
