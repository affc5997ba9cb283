"""Lifecycle: check, detach, mount, serve, and always unmount.

Kept apart from the operations so that every way out (SIGINT, SIGTERM, an
external `fusermount -u`, an exception) goes through one `finally` that
closes the FUSE session and unmounts, leaving no "Transport endpoint is not
connected" behind.

Detaching works like sshfs: the parent forks before any thread exists, the
child does all the work up to a ready mount, then tells the parent through a
pipe, and only then does the parent exit 0. Any failure before that point is
reported by the parent as one line on stderr with a non-zero exit.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pyfuse3
import trio

from . import kernel_cache
from .docker_source import DockerProblem, DockerSource
from .endpoints import Endpoint
from .ninep.child import Shim, ShimFailed
from .operations import MAX_WORKERS, DockerFS

log = logging.getLogger(__name__)

SYSLOG_SOCKET = "/dev/log"


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


def check_mountpoint(path: str) -> None:
    if not os.path.exists("/dev/fuse"):
        raise MountError("/dev/fuse is missing: is the fuse kernel module loaded?")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise MountError(f"{path} is already a mount point (unmount it with fusermount3 -u)")


def fuse_options(config: MountConfig) -> set[str]:
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts |= {"fsname=dockerfs", "subtype=dockerfs"}
    for opt in config.fuse_options:
        opts |= {o for o in opt.split(",") if o}
    if config.debug:
        opts.add("debug")
    return opts


def prepare(config: MountConfig) -> tuple[list[DockerSource], DockerFS]:
    """Everything that can fail with a clear message, before mounting.

    One engine must answer, or nothing is mounted. With several, a bad
    endpoint (TLS material, an ssh set-up) still refuses the mount, but an
    engine that does not answer is only logged: its directory answers EIO
    until it does, and the others serve meanwhile.
    """
    check_mountpoint(config.mountpoint)
    targets: list[Endpoint | None] = list(config.endpoints) or [None]
    sources: list[DockerSource] = []
    try:
        for target in targets:
            source = DockerSource(target)
            sources.append(source)
            source.start()
        for source in sources:
            _ping(source, len(sources) > 1)
    except (DockerProblem, MountError) as exc:
        for source in sources:
            source.close()
        raise MountError(str(exc)) from None
    caching = kernel_cache.detect()
    log.info("kernel caching of listings and pages %s", caching.why)
    engines = {source.target.name: source for source in sources}
    fs = DockerFS(
        engines, show_all=config.show_all, kernel_cache=caching.enabled, swarm=config.swarm
    )
    return sources, fs


def _ping(source: DockerSource, several: bool) -> None:
    try:
        version = source.ping()
    except (DockerProblem, OSError, ValueError) as exc:
        # One line, whatever the engine put in its message (dockerd ends some with "\n").
        detail = " ".join(str(exc).split())
        message = f"cannot reach Docker at {source.endpoint}: {detail}"
        if not several:
            raise MountError(message) from None
        log.warning("%s: %s; its directory answers EIO until it does", source.target.name, message)
        return
    engine = "Podman" if source.podman else "Docker"
    log.info("%s: %s %s at %s", source.target.name, engine, version, source.endpoint)


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

    def on_ready(error: str | None) -> None:
        if error is not None:
            failure.append(error)
        if ready is not None:
            ready(error)

    sources, fs = prepare(config)
    try:
        pyfuse3.init(fs, config.mountpoint, fuse_options(config))
    except RuntimeError as exc:
        for source in sources:
            source.close()
        raise MountError(f"cannot mount {config.mountpoint}: {exc}") from None
    shim = (
        Shim(config.ninep, config.mountpoint, config.ninep_allow_control) if config.ninep else None
    )
    try:
        trio.run(serve, fs, shim, on_ready)
    finally:
        if shim is not None:
            shim.stop()
        pyfuse3.close(unmount=True)
        for source in sources:
            source.close()
    if failure and ready is None:
        raise MountError(failure[0])
    return 1 if failure else 0


def mount(config: MountConfig) -> int:
    if config.foreground:
        return run_mounted(config)
    return _detached(config)


def _detached(config: MountConfig) -> int:
    """Fork; the child mounts and reports through a pipe; the parent waits for that."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            message = pipe.read().decode(errors="replace")
        if message == "ok":
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
        _redirect_stdio(config.log_file)
        report("ok")

    code = 1
    try:
        code = run_mounted(config, ready)
    except MountError as exc:
        report(str(exc))
    except BaseException as exc:  # the parent must hear of it, or it waits forever
        log.exception("daemon failed")
        with contextlib.suppress(OSError):
            report(f"{type(exc).__name__}: {exc}")
    finally:
        os._exit(code)


def _redirect_stdio(log_file: str | None) -> None:
    """A daemon keeps no terminal and no working directory (so it never holds
    a filesystem busy): stdio to /dev/null, logs to the log file if given,
    else to syslog where there is one."""
    os.chdir("/")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    if log_file:
        fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    else:
        os.dup2(devnull, 2)
    os.close(devnull)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    root = logging.getLogger()
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
    if not log_file and os.path.exists(SYSLOG_SOCKET):
        syslog = logging.handlers.SysLogHandler(
            SYSLOG_SOCKET, facility=logging.handlers.SysLogHandler.LOG_DAEMON
        )
        syslog.setFormatter(logging.Formatter(f"dockerfs-fuse[{os.getpid()}]: %(message)s"))
        root.addHandler(syslog)
