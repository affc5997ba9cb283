"""`dockerfs-fuse`: parse the command line, check it, set up logging, hand over to mount.

Two ways to call it: `dockerfs-fuse [options] MOUNTPOINT`, and mount.fuse3's
`dockerfs-fuse SOURCE MOUNTPOINT -o OPTS` (what fstab, `mount -t
fuse.dockerfs-fuse` and systemd `.mount` units run). Every option is also an
`-o` option (options.py); both spellings end up in one argparse namespace.
"""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import re
import sys
from collections.abc import Sequence

from dockerfs_fuse import __version__
from dockerfs_fuse.docker import endpoints
from dockerfs_fuse.lifecycle import library_warnings, options

library_warnings.route_to_log()  # before .mount imports aiodocker and its dependencies

from dockerfs_fuse.engine.engines import VIEWS  # noqa: E402
from dockerfs_fuse.lifecycle.config import FD_MOUNTPOINT, MountConfig, MountError  # noqa: E402
from dockerfs_fuse.lifecycle.mount import mount, ping_engines  # noqa: E402
from dockerfs_fuse.lifecycle.preflight import check_config  # noqa: E402
from dockerfs_fuse.lifecycle.usage import OneLineParser  # noqa: E402

PROG = "dockerfs-fuse"
SUBTYPE = PROG  # fuse.dockerfs-fuse: mount.fuse3 runs the program named by the subtype

# SOURCE that means "the engine the docker CLI would pick" (nothing from SOURCE).
DEFAULT_SOURCE = "default"
# What the docker CLI accepts as a context name (cli/context/store).
CONTEXT_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.+-]*")


def parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=PROG,
        description="Mount the containers of Docker engines as a filesystem: one engine's "
        "containers at the top, or one directory per engine when -H/--context name several.",
        epilog=options.help_text() + "\n\n"
        "Unmount with: fusermount3 -u MOUNTPOINT (or umount).\n"
        "Docker access is root-equivalent: anyone who can write this mount's ctl files,\n"
        "open its clone files or exec sessions (<id>/exec/, commands inside a container),\n"
        "write a container's root/, or reach its 9P shim with control enabled can control\n"
        "Docker. Only the mounting user (or root) may; -o ro refuses them all.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        nargs="?",
        help="the engine, as mount.fuse3 passes it: a URL as for -H, a docker context name, "
        f"or {DEFAULT_SOURCE!r} for the engine the docker CLI would use",
    )
    p.add_argument(
        "mountpoint",
        metavar="MOUNTPOINT",
        nargs="?",  # for argparse only, so that --ping can go without it (parse_args)
        help="an empty directory (or /dev/fd/N: a /dev/fuse descriptor already mounted, "
        "as mount.fuse3 -o drop_privileges passes)",
    )
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
        help="options, comma-separated: every option of dockerfs-fuse (all, host=URL, ...), "
        "FUSE options (allow_other, ...) and kernel mount flags (ro, noexec, ...); "
        "the list follows",
    )
    p.add_argument(
        "-a", "--all", action="store_true", help="list stopped containers too, not only running"
    )
    p.add_argument(
        "--view",
        choices=VIEWS,
        help="what each engine shows: its containers (the default); the whole engine "
        "(containers/, images/, volumes/, networks/, projects/: docs/engine.md; a "
        "`clone` file in the first four creates, which is controlling Docker: the "
        "mounting user only); or the Swarm cluster it manages (services/, nodes/, "
        "tasks/), as --swarm",
    )
    p.add_argument(
        "--swarm",
        action="store_true",
        help="show the Swarm cluster the engine manages (services/, nodes/, tasks/) "
        "instead of its containers: --view=swarm",
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
        help="let 9P clients write ctl and clone files and run exec sessions: whoever reaches "
        "the socket controls Docker (root)",
    )
    p.add_argument(
        "--nonempty",
        action="store_true",
        help="mount over a directory that holds files (hidden while mounted)",
    )
    p.add_argument(
        "--log-file",
        metavar="FILE",
        help="where a detached daemon logs (default: syslog, else "
        "$XDG_STATE_HOME/dockerfs-fuse/dockerfs-fuse.log)",
    )
    p.add_argument(
        "--ping",
        action="store_true",
        help="only check that the engines of -H/--context (or the docker CLI's) answer: "
        "exit 0, or print why not in one line and exit 1; no MOUNTPOINT",
    )
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    # The synopsis shows MOUNTPOINT as what it is without --ping: required.
    p.usage = p.format_usage().removeprefix("usage: ").replace("[MOUNTPOINT]", "MOUNTPOINT")
    return p


def setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format=f"{PROG}: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("asyncio").setLevel(logging.WARNING)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line with SOURCE and the -o options folded into the long options."""
    p = parser()
    args = p.parse_intermixed_args(argv)
    if args.ping:
        if args.mountpoint is not None or args.source is not None:
            p.error("--ping takes no SOURCE or MOUNTPOINT: name the engine with -H or --context")
    elif args.mountpoint is None:
        if args.source is None:
            p.error("the following arguments are required: MOUNTPOINT")
        args.source, args.mountpoint = None, args.source  # the one positional is MOUNTPOINT
    if args.source is not None and not could_be_source(args.source):
        # `-H URL MNT extra`: two positionals are SOURCE MOUNTPOINT, and a path is no SOURCE.
        p.error(
            f"too many arguments: {args.source} {args.mountpoint}: give one MOUNTPOINT; "
            "a SOURCE before it is a URL, a docker context name or 'default'"
        )
    try:
        apply_mount_options(args)
    except options.OptionError as exc:
        p.exit(1, f"{PROG}: {exc}\n")
    if args.swarm and args.view not in (None, "swarm"):
        p.error(f"--swarm is --view=swarm: not with --view={args.view}")
    return args


def view_of(args: argparse.Namespace) -> str:
    """--view, -o view= (the last one given) or --swarm; the default view without."""
    return str(args.view or ("swarm" if args.swarm else VIEWS[0]))


def could_be_source(text: str) -> bool:
    """Whether SOURCE names an engine at all: a URL (`:`), a context name, or 'default'."""
    return not text or ":" in text or bool(CONTEXT_NAME.fullmatch(text))


def apply_mount_options(args: argparse.Namespace) -> None:
    """`-o all,host=URL` as `--all -H URL`; SOURCE as a first -H or --context.

    Afterwards args.options holds only what goes to libfuse.
    """
    parsed = options.parse(args.options)
    for dest, value in parsed.ours.items():
        if isinstance(value, bool):
            setattr(args, dest, True)
        elif dest == "log_file":
            args.log_file = value[-1]
        elif dest == "view":
            if value[-1] not in VIEWS:
                raise options.OptionError(
                    f"-o view={value[-1]}: no such view (one of {', '.join(VIEWS)})"
                )
            args.view = value[-1]
        else:
            setattr(args, dest, (getattr(args, dest) or []) + value)
    for item in parsed.helper:
        _check_helper_option(item)
    args.options = parsed.fuse
    source = args.source
    args.fsname = source
    if source is None or source == DEFAULT_SOURCE:
        return
    if not source:
        raise options.OptionError("empty SOURCE: give a URL, a context name or 'default'")
    # A docker context name never holds ':' (the CLI allows [a-zA-Z0-9][a-zA-Z0-9_.+-]*).
    if ":" in source:
        args.host = [source, *(args.host or [])]
    else:
        args.context = [source, *(args.context or [])]


def _check_helper_option(item: str) -> None:
    """mount.fuse3 acts on these and never passes them on; seen here, the
    daemon was run by hand (or by mount(8) without mount.fuse3), and cannot
    do what they ask, so it says so rather than run as the wrong user."""
    name, _, value = item.partition("=")
    if name == "setuid":
        if value in (_user_name(), str(os.getuid())):
            return  # already that user: nothing to do
        raise options.OptionError(
            f"-o setuid={value}: only mount.fuse3 switches user "
            "(mount -t fuse.dockerfs-fuse); or run dockerfs-fuse as that user"
        )
    raise options.OptionError(
        f"-o {name}: only mount.fuse3 does that (mount -t fuse.dockerfs-fuse), "
        "then runs dockerfs-fuse on /dev/fd/N"
    )


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return ""


def fsname_for(source: str | None, found: Sequence[endpoints.Endpoint]) -> str:
    """What `findmnt` shows as SOURCE: what the user wrote, else the engine's URL."""
    if source:
        return source
    if len(found) == 1:
        return found[0].url
    return PROG


def config_from(args: argparse.Namespace) -> MountConfig:
    try:
        found = endpoints.resolve(args.host, args.context, os.environ)
    except endpoints.EndpointError as exc:
        raise MountError(str(exc)) from None
    return MountConfig(
        # Absolute: a detached daemon leaves its working directory. An empty
        # MOUNTPOINT stays empty (abspath would make it ".") and is refused.
        # /dev/fd/N (mount.fuse3 -o drop_privileges) is a descriptor, not a path.
        mountpoint=args.mountpoint
        if not args.mountpoint or FD_MOUNTPOINT.fullmatch(args.mountpoint)
        else os.path.abspath(args.mountpoint),
        endpoints=found,
        foreground=args.foreground or args.debug,
        debug=args.debug,
        fuse_options=args.options,
        show_all=args.all,
        view=view_of(args),
        log_file=os.path.abspath(args.log_file) if args.log_file else None,
        ninep=args.ninep,
        ninep_allow_control=args.ninep_allow_control,
        nonempty=args.nonempty,
        fsname=fsname_for(args.fsname, found),
        subtype=SUBTYPE,
    )


def ping(args: argparse.Namespace) -> int:
    """`--ping`: whether `dockerfs-fuse -H ... MOUNTPOINT` would find its engines
    answering; what `make run` asks before choosing the demo's private engine."""
    try:
        found = endpoints.resolve(args.host, args.context, os.environ)
        for note in ping_engines(found):
            print(note)
    except (endpoints.EndpointError, MountError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.debug)
    if args.ping:
        return ping(args)
    try:
        config = config_from(args)
        check_config(config)  # every argument, before Docker is asked or anything is mounted
        return mount(config)
    except MountError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
