"""Lifecycle: check, detach, mount, serve, and always unmount.

Kept apart from the operations so that every way out (SIGINT, SIGTERM, an
external `fusermount -u`, an exception) goes through one `finally` that
closes the FUSE session and unmounts, leaving no "Transport endpoint is not
connected" behind.

Detaching works like sshfs: the parent checks every argument, forks before
any thread exists, the child does all the work up to a ready mount, then
tells the parent through a pipe, and only then does the parent exit 0,
having printed nothing. Any failure before that point is reported by the
parent as one line on stderr with a non-zero exit.

The daemon must never wait on its own mount: a Docker socket, log file or 9P
socket reached through the mountpoint would make it serve a request by
making another one to itself. Such paths are refused before mounting.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import logging.handlers
import os
import re
import signal
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pyfuse3
import trio

from dockerfs_fuse.docker.endpoints import Endpoint, EndpointError, default_endpoint
from dockerfs_fuse.docker.errors import DockerProblem
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.fuse import kernel_cache
from dockerfs_fuse.fuse.operations import MAX_WORKERS, DockerFS
from dockerfs_fuse.lifecycle import options, sd_notify
from dockerfs_fuse.ninep.child import Shim, ShimFailed
from dockerfs_fuse.ninep.cli import Dial, parse_dial

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"
# Where a detached daemon logs without --log-file and without syslog, under
# $XDG_STATE_HOME (default ~/.local/state), as the XDG base directory spec says.
STATE_DIR = "dockerfs-fuse"
STATE_LOG = "dockerfs-fuse.log"

# A mountpoint given as an open /dev/fuse descriptor, already mounted:
# mount.fuse3 -o drop_privileges mounts itself and passes /dev/fd/N
# (libfuse >= 3.3 serves such a descriptor in fuse_session_mount).
FD_MOUNTPOINT = re.compile(r"/dev/fd/(\d{1,9})")


class MountError(Exception):
    """A problem to report as one line before anything is mounted."""


@dataclass
class MountConfig:
    mountpoint: str
    # Empty: the engine the docker CLI would use (see endpoints).
    endpoints: list[Endpoint] = field(default_factory=list)
    foreground: bool = False
    debug: bool = False
    fuse_options: list[str] = field(default_factory=list)
    show_all: bool = False
    # The Swarm cluster the engine manages, instead of its containers.
    swarm: bool = False
    log_file: str | None = None
    # Re-export the mount over 9P on these dial strings (the dockerfs-9p shim).
    ninep: list[str] = field(default_factory=list)
    ninep_allow_control: bool = False
    # Mount over a directory that holds files (hiding them while mounted).
    nonempty: bool = False
    # What mount tables show: SOURCE fuse.SUBTYPE (mount.fuse3 runs SUBTYPE for fstab).
    fsname: str = "dockerfs-fuse"
    subtype: str = "dockerfs-fuse"


# -- checks: every argument, before Docker is asked or anything is mounted ----------


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
# _init_fuse).
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


def fuse_options(config: MountConfig) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    given = [o for opt in config.fuse_options for o in opt.split(",") if o]
    if not any(o.startswith("fsname=") for o in given):
        opts.add("fsname=" + _escape(config.fsname))
    if not any(o.startswith("subtype=") for o in given):
        opts.add("subtype=" + config.subtype)
    opts |= set(given)
    if config.debug:
        opts.add("debug")
    return opts


def _escape(value: str) -> str:
    """libfuse splits -o at commas; a backslash keeps one (fuse_opt.c)."""
    return value.replace("\\", "\\\\").replace(",", "\\,")


def check_log_file(path: str, mountpoint: str) -> None:
    """It must be writable now: a detached daemon opens it before mounting."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise MountError(f"--log-file {path}: directory {directory} does not exist")
    if passes_through(path, mountpoint):
        raise MountError(_under_mountpoint("--log-file", path, mountpoint))
    try:
        os.close(open_log(path))
    except OSError as exc:
        raise MountError(f"--log-file {path}: cannot open for append: {exc.strerror}") from None


def open_log(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)


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
            raise MountError(_under_mountpoint("--9p socket", path, mountpoint))
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
            raise MountError(_under_mountpoint("the Docker socket", path, mountpoint))


def _under_mountpoint(what: str, path: str, mountpoint: str) -> str:
    return (
        f"{what} {path} is reached through the mountpoint {mountpoint}: "
        "the daemon would block on its own mount"
    )


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


def prepare(config: MountConfig) -> tuple[list[DockerSource], DockerFS, list[str]]:
    """Everything about Docker that can fail with a clear message, before mounting.
    Returns the sources, the filesystem and what to log once the mount serves.

    One engine must answer, or nothing is mounted. With several, a bad
    endpoint (TLS material, an ssh set-up) still refuses the mount, but an
    engine that does not answer is only logged: its directory answers EIO
    until it does, and the others serve meanwhile.
    """
    sources = _started_sources(config.endpoints)
    try:
        # Once each: a dead engine costs one deadline and one warning.
        notes = [_ping(source, len(sources) > 1) for source in sources]
    except MountError:
        for source in sources:
            source.close()
        raise
    caching = kernel_cache.detect()
    notes.append(f"kernel caching of listings and pages {caching.why}")
    engines = {source.target.name: source for source in sources}
    fs = DockerFS(
        engines, show_all=config.show_all, kernel_cache=caching.enabled, swarm=config.swarm
    )
    return sources, fs, notes


def ping_engines(endpoints: list[Endpoint]) -> list[str]:
    """`dockerfs-fuse --ping`: one line per engine that answers (the line a mount
    logs), or a MountError for the first that does not; nothing is mounted.

    Each engine must answer, unlike a mount of several: a script asking
    whether it can mount wants to hear about any engine that would answer EIO.
    """
    sources = _started_sources(endpoints)
    try:
        return [_ping(source, several=False) for source in sources]
    finally:
        for source in sources:
            source.close()


def _started_sources(endpoints: list[Endpoint]) -> list[DockerSource]:
    """A started DockerSource per endpoint (the docker CLI's engine when none is
    given); a bad endpoint (TLS material, an ssh set-up) is a MountError."""
    targets: list[Endpoint | None] = list(endpoints) or [None]
    sources: list[DockerSource] = []
    try:
        for target in targets:
            source = DockerSource(target)
            sources.append(source)
            source.start()
    except DockerProblem as exc:
        for source in sources:
            source.close()
        raise MountError(str(exc)) from None
    return sources


def _ping(source: DockerSource, several: bool) -> str:
    """What to log about the engine once mounted; raises for a lone engine that does not answer."""
    try:
        version = source.ping()
    except (DockerProblem, OSError, ValueError) as exc:
        # One line, whatever the engine put in its message (dockerd ends some with "\n").
        detail = " ".join(str(exc).split())
        prefix = f"cannot reach Docker at {source.endpoint}: "
        message = detail if detail.startswith(prefix) else prefix + detail
        if not several:
            raise MountError(message) from None
        log.warning("%s: %s; its directory answers EIO until it does", source.target.name, message)
        return f"{source.target.name}: not answering yet"
    engine = "Podman" if source.podman else "Docker"
    return f"{source.target.name}: {engine} {version} at {source.endpoint}"


# Told once the mount serves (None) or could not be made whole (a message).
Ready = Callable[[str | None], None]


async def serve(fs: DockerFS, shim: Shim | None, ready: Ready) -> None:
    """Run until unmounted or signalled; signals end the loop, not the process."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(fs.run_invalidator)
        nursery.start_soon(fs.run_events)
        nursery.start_soon(_terminate_on_signals)
        nursery.start_soon(_start_companions, shim, ready, nursery)
        await pyfuse3.main(max_tasks=MAX_WORKERS)
        nursery.cancel_scope.cancel()


async def _start_companions(shim: Shim | None, ready: Ready, nursery: trio.Nursery) -> None:
    """The shim reads the mount, so it starts only once the FUSE loop is serving."""
    if shim is not None:
        try:
            await trio.to_thread.run_sync(shim.start)
        except ShimFailed as exc:
            ready(str(exc))
            pyfuse3.terminate()
            return
        nursery.start_soon(_terminate_when_shim_exits, shim)
    ready(None)


async def _terminate_when_shim_exits(shim: Shim) -> None:
    while shim.alive():
        await trio.sleep(0.5)
    log.warning("the 9P shim exited: unmounting")
    pyfuse3.terminate()


async def _terminate_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def run_mounted(config: MountConfig, ready: Ready | None = None) -> int:
    """Mount, serve, unmount. Returns the exit status."""
    failure: list[str] = []
    notifier = sd_notify.Notifier.from_environ()

    def on_ready(error: str | None) -> None:
        if error is not None:
            failure.append(error)
        else:
            # Only now: a start-up that fails says one line, and nothing before it.
            log.info("%s, mounted at %s", notes[0], config.mountpoint)
            for line in notes[1:]:
                log.info("%s", line)
            for warning in security_warnings(config):
                log.warning("%s", warning)
            notifier.ready(f"serving {status}")  # systemd Type=notify: the mount serves
        if ready is not None:
            ready(error)

    sources, fs, notes = prepare(config)
    status = _status(sources, config.mountpoint)
    try:
        _init_fuse(fs, config.mountpoint, fuse_options(config))
    except MountError:
        for source in sources:
            source.close()
        raise
    shim = (
        Shim(config.ninep, config.mountpoint, config.ninep_allow_control) if config.ninep else None
    )
    try:
        trio.run(serve, fs, shim, on_ready)
    finally:
        notifier.stopping(f"unmounting {status}")
        if shim is not None:
            shim.stop()
        pyfuse3.close(unmount=True)
        for source in sources:
            source.close()
    if failure and ready is None:
        raise MountError(failure[0])
    return 1 if failure else 0


def _status(sources: list[DockerSource], mountpoint: str) -> str:
    """systemd's STATUS line: which engines, mounted where."""
    engines = ", ".join(f"{s.target.name} ({s.endpoint})" for s in sources)
    return f"{engines} at {mountpoint}"


def _init_fuse(fs: DockerFS, mountpoint: str, options: set[str]) -> None:
    """pyfuse3.init with libfuse's stderr (and fusermount3's) caught: a
    refusal becomes one MountError carrying libfuse's own reason."""
    with tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            pyfuse3.init(fs, mountpoint, options)
            error = None
        except RuntimeError as exc:
            error = str(exc)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        caught.seek(0)
        said = caught.read().decode(errors="replace").strip()
    if error is not None:
        reason = "; ".join(line.strip() for line in said.splitlines()) or error
        raise MountError(f"cannot mount {mountpoint}: {reason}")
    if said:  # warnings, or -d's debug output: passed on as they were
        print(said, file=sys.stderr)


def mount(config: MountConfig) -> int:
    """Mount as `config` says; `check_config(config)` must have passed."""
    if config.foreground:
        return run_mounted(config)
    return _detached(config)


def _detached(config: MountConfig) -> int:
    """Fork; the child mounts and reports through a pipe; the parent waits for that.

    The child leaves the terminal at once (logs go to the log file, syslog,
    or a file under $XDG_STATE_HOME), so a detached start that fails prints
    the one line the parent gets through the pipe, and one that works prints
    only what the user must know: security warnings, and where the log goes
    when that is not where they would look."""
    log_fd, notes = _log_destination(config)
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
        _leave_terminal(log_fd)
        code = run_mounted(config, ready)
    except MountError as exc:
        log.error("%s", exc)
        report(str(exc))
    except BaseException as exc:  # the parent must hear of it, or it waits forever
        log.exception("daemon failed")
        with contextlib.suppress(OSError):
            report(f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _log_destination(config: MountConfig) -> tuple[int | None, list[str]]:
    """The log file a detached daemon writes (None: syslog), opened before
    anything is mounted, and what to tell the user about it.

    --log-file wins (checked already by check_log_file). Without it, syslog
    where a syslog daemon listens; else a file under $XDG_STATE_HOME, so a
    refused ctl write's reason or a warning is never logged nowhere.
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


FILE_LOG_FORMAT = "%(asctime)s dockerfs-fuse[%(process)d]: %(levelname)s %(name)s: %(message)s"
FILE_LOG_TIME = "%Y-%m-%dT%H:%M:%SZ"


def _leave_terminal(log_fd: int | None) -> None:
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
