"""Mount, serve, and always unmount.

Kept apart from the operations so that every way out (SIGINT, SIGTERM, an
external `fusermount -u`, an exception) leaves by one `AsyncExitStack`: each
resource's release is registered on it as the resource is taken, so each
Docker source is closed once and the FUSE session is closed and unmounted
once, leaving no "Transport endpoint is not connected" behind.

The arguments are checked before this (preflight.py); a detached daemon
forks before this (detach.py).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import tempfile

import pyfuse3
import trio

from dockerfs_fuse.docker.endpoints import Endpoint
from dockerfs_fuse.docker.errors import DockerProblem
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.fuse import kernel_cache
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.operations import MAX_WORKERS, DockerFS
from dockerfs_fuse.lifecycle import sd_notify
from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.lifecycle.detach import Ready, detached
from dockerfs_fuse.lifecycle.preflight import security_warnings
from dockerfs_fuse.ninep.child import Shim, ShimFailed

log = logging.getLogger(__name__)

# Where a release is registered: a mount's AsyncExitStack, or --ping's ExitStack.
Releases = contextlib.ExitStack | contextlib.AsyncExitStack


def mount(config: MountConfig) -> int:
    """Mount as `config` says; `check_config(config)` must have passed."""
    if config.foreground:
        return run_mounted(config)
    return detached(config, lambda ready: run_mounted(config, ready))


def run_mounted(config: MountConfig, ready: Ready | None = None) -> int:
    """Mount, serve, unmount. Returns the exit status."""
    failure: list[str] = []

    def told(error: str | None) -> None:
        if error is not None:
            failure.append(error)
        if ready is not None:
            ready(error)

    trio.run(mount_and_serve, config, told)
    if failure and ready is None:
        raise MountError(failure[0])
    return 1 if failure else 0


async def mount_and_serve(config: MountConfig, ready: Ready) -> None:
    """Take the sources, the mount and the shim in turn, each one's release
    registered as it is taken; serve until unmounted or signalled; release
    everything taken, in reverse order, however this ends."""
    notifier = sd_notify.Notifier.from_environ()
    async with contextlib.AsyncExitStack() as releases:
        sources, fs, notes = prepare(config, releases)
        status = _status(sources, config.mountpoint)
        settle_start_up_objects()  # before serving: its one full pass pauses no request
        init_fuse(fs, config.mountpoint, fuse_options(config))
        releases.callback(pyfuse3.close, unmount=True)
        shim = None
        if config.ninep:
            shim = Shim(config.ninep, config.mountpoint, config.ninep_allow_control)
            releases.callback(shim.stop)
        releases.callback(notifier.stopping, f"unmounting {status}")

        def on_ready(error: str | None) -> None:
            if error is None:
                # Only now: a start-up that fails says one line, and nothing before it.
                log.info("%s, mounted at %s", notes[0], config.mountpoint)
                for line in notes[1:]:
                    log.info("%s", line)
                for warning in security_warnings(config):
                    log.warning("%s", warning)
                notifier.ready(f"serving {status}")  # systemd Type=notify: the mount serves
            ready(error)

        await serve(fs, shim, on_ready)


# The cycle collector's thresholds once serving (Python's are 700, 10, 10).
GC_THRESHOLDS = (10_000, 50, 50)


def settle_start_up_objects() -> None:
    """Keep the cycle collector's full passes out of the replies.

    What start-up made (some 50,000 objects: modules, classes, the
    libraries' tables) lives as long as the daemon: it is taken out of the
    collector's view (collected once first). And a full pass, which scans
    every answer and node held (25 ms at 500 images, hundreds at 10,000
    containers), runs only after 50 middle passes, themselves after 50
    young ones of 10,000 allocations: Python's own 10 and 10 at 700 made
    one land inside a first `ls volumes` after `ls images` (50 ms instead
    of 15). Garbage in cycles still goes in the young and middle passes,
    where nearly all of it dies."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


# -- Docker: every engine started and pinged once, before mounting ------------------


def prepare(
    config: MountConfig, releases: Releases
) -> tuple[list[DockerSource], DockerFS, list[str]]:
    """Everything about Docker that can fail with a clear message, before mounting.
    Returns the sources (each one's close registered on `releases`), the
    filesystem and what to log once the mount serves.

    One engine must answer, or nothing is mounted. With several, a bad
    endpoint (TLS material, an ssh set-up) still refuses the mount, but an
    engine that does not answer is only logged: its directory answers EIO
    until it does, and the others serve meanwhile.
    """
    sources = open_sources(config.endpoints, releases)
    # Once each: a dead engine costs one deadline and one warning.
    notes = [_ping(source, len(sources) > 1) for source in sources]
    caching = kernel_cache.detect()
    notes.append(f"kernel caching of listings and pages {caching.why}")
    # The engines tell the invalidator of every change; the filesystem answers from both.
    invalidator = Invalidator(kernel_cache=caching.enabled)
    engines = Engines(
        {source.target.name: source for source in sources},
        invalidator.apply,
        show_all=config.show_all,
        kernel_cache=caching.enabled,
        view=config.view,
    )
    fs = DockerFS(engines, invalidator)
    releases.callback(fs.close)  # after the unmount: drafts left open are kept
    return sources, fs, notes


def ping_engines(endpoints: list[Endpoint]) -> list[str]:
    """`dockerfs-fuse --ping`: one line per engine that answers (the line a mount
    logs), or a MountError for the first that does not; nothing is mounted.

    Each engine must answer, unlike a mount of several: a script asking
    whether it can mount wants to hear about any engine that would answer EIO.
    """
    with contextlib.ExitStack() as releases:
        sources = open_sources(endpoints, releases)
        return [_ping(source, several=False) for source in sources]


def open_sources(endpoints: list[Endpoint], releases: Releases) -> list[DockerSource]:
    """A started DockerSource per endpoint (the docker CLI's engine when none is
    given), each one's close registered on `releases` before it starts (a
    failed start leaves a thread to stop); a bad endpoint (TLS material, an
    ssh set-up) is a MountError."""
    targets: list[Endpoint | None] = list(endpoints) or [None]
    sources: list[DockerSource] = []
    try:
        for target in targets:
            source = DockerSource(target)
            releases.callback(source.close)
            sources.append(source)
            source.start()
    except DockerProblem as exc:
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


def _status(sources: list[DockerSource], mountpoint: str) -> str:
    """systemd's STATUS line: which engines, mounted where."""
    engines = ", ".join(f"{s.target.name} ({s.endpoint})" for s in sources)
    return f"{engines} at {mountpoint}"


# -- FUSE: the session, and the loop that serves it --------------------------------


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


def init_fuse(fs: DockerFS, mountpoint: str, options: set[str]) -> None:
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
