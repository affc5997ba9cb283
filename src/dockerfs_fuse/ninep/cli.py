"""`dockerfs-9p [--listen DIAL]... [--allow-control] [-d|--debug] DIRECTORY`

Parses dial strings, opens the listeners, announces them on stderr, and turns
SIGINT/SIGTERM into a clean exit.  The 9P itself starts in server.py.

Read-only by default.  --allow-control lets writes through to files that are
writable in DIRECTORY; over the dockerfs mount that means the containers'
ctl files, and whoever can reach the socket can then drive Docker, which is
root on the host.  Creating, removing and renaming stay refused even then.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from dockerfs_fuse.lifecycle.library_warnings import route_to_log
from dockerfs_fuse.lifecycle.usage import USAGE_EXIT, OneLineParser
from dockerfs_fuse.ninep.export import Export
from dockerfs_fuse.ninep.resources import raise_fd_limit
from dockerfs_fuse.ninep.server import serve

DEFAULT_DIAL = "tcp!localhost!9999"
log = logging.getLogger("dockerfs_fuse.ninep")


@dataclass(frozen=True)
class Dial:
    """A parsed Plan 9 dial string: tcp!HOST!PORT or unix!PATH."""

    network: str
    address: str
    port: int = 0


def parse_dial(text: str) -> Dial:
    """`localhost` means loopback only; any other address must be spelled out
    (`*` or `0.0.0.0` for every interface)."""
    parts = text.split("!")
    if parts[0] == "unix" and len(parts) == 2 and parts[1]:
        return Dial("unix", parts[1])
    if parts[0] == "tcp" and len(parts) == 3:
        host, port = parts[1], parts[2]
        if not port.isdigit() or int(port) > 65535:
            raise ValueError(f"bad port in dial string {text!r}")
        host = {"localhost": "127.0.0.1", "*": "0.0.0.0", "": "127.0.0.1"}.get(host, host)
        return Dial("tcp", host, int(port))
    raise ValueError(f"bad dial string {text!r}: want tcp!HOST!PORT or unix!PATH")


def shim_command(dial: str, directory: str, allow_control: bool = False) -> list[str]:
    """argv to run the shim as a child process beside the FUSE mount."""
    argv = [sys.executable, "-m", "dockerfs_fuse.ninep.cli", "--exit-with-parent", "--listen", dial]
    if allow_control:
        argv.append("--allow-control")
    return [*argv, directory]


class ListenError(Exception):
    """A dial the shim cannot listen on; the message names the address."""


def _address(dial: Dial) -> str:
    """How the address is written in messages: 127.0.0.1:9999, [::1]:9999, or the path."""
    if dial.network == "unix":
        return dial.address
    host = f"[{dial.address}]" if ":" in dial.address else dial.address
    return f"{host}:{dial.port}"


async def open_listener(dial: Dial) -> tuple[trio.SocketListener, str]:
    """A listening socket and the dial string it really got (port 0 → real port).
    A failure is a ListenError naming the address ("127.0.0.1:9999: address
    already in use"), not the bare errno the socket call raised."""
    try:
        return await _open_listener(dial)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ListenError(f"{_address(dial)}: {why[:1].lower()}{why[1:]}") from None


async def _open_listener(dial: Dial) -> tuple[trio.SocketListener, str]:
    if dial.network == "unix":
        _remove_stale_socket(dial.address)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # 0600 whatever the umask: whoever connects reads the tree, and with
        # --allow-control drives Docker.  bind() creates the file with the
        # socket's mode less the umask, so narrow both (nothing else runs yet).
        os.fchmod(sock.fileno(), 0o600)
        umask = os.umask(0o177)
        try:
            await sock.bind(dial.address)
        finally:
            os.umask(umask)
        sock.listen(128)
        return trio.SocketListener(sock), f"unix!{dial.address}"
    family = socket.AF_INET6 if ":" in dial.address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((dial.address, dial.port))
    sock.listen(128)
    host, port = sock.getsockname()[:2]
    return trio.SocketListener(sock), f"tcp!{host}!{port}"


def _remove_stale_socket(path: str) -> None:
    """A socket left by a killed shim would make bind fail; anything that is
    not a socket is left alone."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


async def _exit_with_parent(parent: int, cancel_scope: trio.CancelScope) -> None:
    """Stop when the process that started us is gone (even if it was SIGKILLed):
    a shim re-exporting a mount must not outlive the mount's daemon."""
    while os.getppid() == parent:
        await trio.sleep(1)
    log.warning("parent %d exited: closing every connection", parent)
    cancel_scope.cancel()


async def run(export: Export, dials: Sequence[Dial], parent: int | None = None) -> None:
    """Listen on every dial and serve until SIGINT or SIGTERM."""
    # Signals first: whoever sees the "listening" line may SIGTERM at once.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        listeners = []
        for dial in dials:
            listener, name = await open_listener(dial)
            listeners.append(listener)
            print(f"dockerfs-9p: listening on {name}", file=sys.stderr, flush=True)
        async with trio.open_nursery() as nursery:
            await nursery.start(serve, export, listeners)
            if parent is not None:
                nursery.start_soon(_exit_with_parent, parent, nursery.cancel_scope)
            async for signum in signals:
                log.info("signal %d: closing every connection", signum)
                nursery.cancel_scope.cancel()
                break
    for dial in dials:
        if dial.network == "unix":
            _remove_stale_socket(dial.address)


def parser() -> argparse.ArgumentParser:
    """The command line, also read by scripts/gen-man for dockerfs-9p(1)."""
    parser = OneLineParser(
        prog="dockerfs-9p",
        description="Serve DIRECTORY over 9P2000, 9P2000.u and 9P2000.L.",
    )
    parser.add_argument(
        "--listen",
        action="append",
        metavar="DIAL",
        help=f"tcp!HOST!PORT or unix!PATH (repeatable; default {DEFAULT_DIAL})",
    )
    parser.add_argument(
        "--allow-control",
        action="store_true",
        help="let writes through to files writable in DIRECTORY "
        "(whoever reaches the socket can then control Docker, i.e. root)",
    )
    parser.add_argument("-d", "--debug", action="store_true", help="log every 9P message")
    # Internal: dockerfs-fuse --9p runs the shim with it (exit when the parent exits).
    parser.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "directory",
        metavar="DIRECTORY",
        help="the directory to serve, usually a dockerfs-fuse mountpoint; "
        "nothing outside it is reachable",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def directory_problem(path: str) -> str | None:
    """Why DIRECTORY cannot be served, in words ("no such directory"), or None."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "no such directory"
    except OSError as exc:
        why = exc.strerror or str(exc)
        return why[:1].lower() + why[1:]
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    route_to_log()
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="dockerfs-9p: %(message)s",
    )
    problem = directory_problem(args.directory)
    if problem is not None:
        print(f"dockerfs-9p: {args.directory}: {problem}", file=sys.stderr)
        return USAGE_EXIT
    try:
        dials = [parse_dial(d) for d in args.listen or [DEFAULT_DIAL]]
        export = Export(args.directory, allow_control=args.allow_control)
        if args.allow_control and any(d.network == "tcp" for d in dials):
            # Loopback is still every local user: they would write as us.
            print(
                "dockerfs-9p: warning: --allow-control on TCP lets every local user write "
                "through this shim (prefer unix!PATH in a private directory)",
                file=sys.stderr,
            )
    except (ValueError, OSError) as exc:
        print(f"dockerfs-9p: {exc}", file=sys.stderr)
        return USAGE_EXIT
    raise_fd_limit()
    try:
        parent = os.getppid() if args.exit_with_parent else None
        trio.run(run, export, dials, parent)
    except (ListenError, OSError) as exc:
        print(f"dockerfs-9p: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
