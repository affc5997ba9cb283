"""`dockerfs-fuse`: parse the command line, set up logging, hand over to mount."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from . import __version__, endpoints
from .mount import MountConfig, MountError, mount

PROG = "dockerfs-fuse"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Mount the containers of Docker engines as a filesystem: one engine's "
        "containers at the top, or one directory per engine when -H/--context name several.",
        epilog="Unmount with: fusermount3 -u MOUNTPOINT. "
        "Docker access is root-equivalent: anyone who can write this mount's ctl files "
        "or reach its 9P shim with control enabled can control Docker.",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("-f", "--foreground", action="store_true", help="do not detach")
    p.add_argument("-d", "--debug", action="store_true", help="log every request (implies -f)")
    p.add_argument(
        "-H",
        "--host",
        metavar="[NAME=]URL",
        action="append",
        help="Docker endpoint (repeatable; NAME names its directory): unix:///PATH, "
        "tcp://HOST:PORT (TLS as DOCKER_TLS_VERIFY and "
        "DOCKER_CERT_PATH say) or ssh://[USER@]HOST[:PORT] "
        "(default: as the docker CLI: DOCKER_HOST, DOCKER_CONTEXT, the current context, "
        "then /var/run/docker.sock)",
    )
    p.add_argument(
        "--context",
        metavar="NAME",
        action="append",
        help="the endpoint of this docker CLI context (~/.docker/contexts; repeatable)",
    )
    p.add_argument(
        "-o",
        dest="options",
        metavar="OPT[,OPT...]",
        action="append",
        default=[],
        help="FUSE mount options, e.g. allow_other",
    )
    p.add_argument(
        "-a", "--all", action="store_true", help="list stopped containers too, not only running"
    )
    p.add_argument(
        "--swarm",
        action="store_true",
        help="show the Swarm cluster the engine manages (services/, nodes/, tasks/) "
        "instead of its containers",
    )
    p.add_argument(
        "--9p",
        dest="ninep",
        metavar="DIAL",
        action="append",
        default=[],
        help="also serve the mount over 9P on DIAL (tcp!HOST!PORT or unix!PATH; repeatable), "
        "read-only, with the dockerfs-9p shim",
    )
    p.add_argument(
        "--9p-allow-control",
        dest="ninep_allow_control",
        action="store_true",
        help="let 9P clients write ctl files: whoever reaches the socket controls Docker (root)",
    )
    p.add_argument("--log-file", metavar="FILE", help="where a detached daemon logs")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return p


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        found = endpoints.resolve(args.host, args.context, os.environ)
    except endpoints.EndpointError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    config = MountConfig(
        # Absolute: a detached daemon leaves its working directory.
        mountpoint=os.path.abspath(args.mountpoint),
        endpoints=found,
        foreground=args.foreground or args.debug,
        debug=args.debug,
        fuse_options=args.options,
        show_all=args.all,
        swarm=args.swarm,
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        ninep=args.ninep,
        ninep_allow_control=args.ninep_allow_control,
    )
    try:
        return mount(config)
    except MountError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
