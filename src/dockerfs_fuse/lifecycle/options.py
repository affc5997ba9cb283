"""The `-o` options: ours, the kernel's, libfuse's and mount(8)'s, in one table.

fstab, `mount -t fuse.dockerfs-fuse` and systemd `.mount` units can only
hand a FUSE filesystem a SOURCE, a MOUNTPOINT and `-o OPTS` (mount.fuse3
runs `dockerfs-fuse SOURCE MOUNTPOINT -o OPTS`), so every command-line option
of ours is also an `-o` option. The other names are what mount(8),
mount.fuse3 and libfuse give any FUSE filesystem: kernel mount flags and
FUSE options go to libfuse (its lib/mount.c table), fstab-only words are
dropped, and anything else is refused, so a typo never mounts with a
setting silently missing.

Pure: no I/O, so the whole table is unit-tested.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum


class OptionError(ValueError):
    """An `-o` option that cannot be used; the message is one line."""


class HandledBy(Enum):
    """Who acts on a -o option."""

    OURS = "ours"  # sets a command-line option of dockerfs-fuse
    FUSE = "fuse"  # handed to libfuse: a kernel mount flag or a FUSE mount option
    IGNORED = "ignored"  # meant for mount(8), fstab or systemd, not for the filesystem
    HELPER = "helper"  # mount.fuse3 acts on it itself and never passes it on


@dataclass(frozen=True)
class Option:
    name: str  # without "=" (a value-taking option is written name=VALUE)
    kind: HandledBy
    value: str | None = None  # metavar when the option takes a value
    dest: str | None = None  # OURS: the argparse dest it sets
    help: str = ""
    prefix: bool = False  # IGNORED: any option starting with name (x-systemd.*, x-gvfs-*)


def _ours(name: str, dest: str, help: str, value: str | None = None) -> Option:
    return Option(name, HandledBy.OURS, value, dest, help)


def _words(text: str) -> list[str]:
    return text.split()


OURS: tuple[Option, ...] = (
    _ours("all", "all", "list stopped containers too (-a)"),
    _ours("view", "view", "what each engine shows: containers, engine or swarm", "VIEW"),
    _ours("swarm", "swarm", "show the Swarm cluster the engine manages (--swarm)"),
    _ours("host", "host", "a Docker engine, [NAME=]URL; repeatable (-H)", "[NAME=]URL"),
    _ours("context", "context", "the engine of a docker CLI context; repeatable", "NAME"),
    _ours("9p", "ninep", "also serve the mount over 9P on DIAL; repeatable (--9p)", "DIAL"),
    _ours(
        "9p_allow_control",
        "ninep_allow_control",
        "let 9P clients write ctl and clone files, run exec",
    ),
    _ours("log_file", "log_file", "where a detached daemon logs (--log-file)", "FILE"),
    _ours("nonempty", "nonempty", "mount over a directory that holds files (--nonempty)"),
    _ours("debug", "debug", "log every request, stay in the foreground (-d)"),
    _ours("foreground", "foreground", "do not detach (-f)"),
)

# Kernel mount flags libfuse knows (lib/mount.c, mount_flags[]): it turns them
# into mount(2) flags. mount.fuse3 adds `dev` and `suid` unless told nodev/nosuid.
# libfuse 3.14 (Debian 12) knows the first line only; it refuses the others when
# mounting, with its own message ("unknown option(s)").
KERNEL_FLAGS = [
    *_words("ro rw dev nodev suid nosuid exec noexec async sync dirsync atime noatime"),
    *_words("diratime nodiratime relatime norelatime strictatime nostrictatime"),
    *_words("lazytime nolazytime symfollow nosymfollow"),
]

# FUSE options libfuse takes (lib/mount.c fuse_mount_opts[], lib/fuse_lowlevel.c).
# SELinux's `context=` is not among them: `context=` names a docker context here.
FUSE_OPTIONS: tuple[Option, ...] = (
    Option(
        "allow_other", HandledBy.FUSE, help="let other users in (user_allow_other in fuse.conf)"
    ),
    Option("allow_root", HandledBy.FUSE, help="let root in as well as the mounting user"),
    Option("default_permissions", HandledBy.FUSE, help="the kernel checks modes (always on)"),
    Option("auto_unmount", HandledBy.FUSE, help="fusermount3 unmounts if the daemon dies"),
    Option("fsname", HandledBy.FUSE, "NAME", help="the source mount tables show (default SOURCE)"),
    Option("subtype", HandledBy.FUSE, "TYPE", help="the type shown as fuse.TYPE"),
    Option("max_read", HandledBy.FUSE, "N", help="largest read request, bytes"),
    Option("blksize", HandledBy.FUSE, "N", help="block size reported (fuseblk only)"),
    Option("blkdev", HandledBy.FUSE, help="a block-device filesystem (fuseblk; not for this one)"),
    Option("fscontext", HandledBy.FUSE, "CONTEXT", help="SELinux context of the filesystem"),
    Option("defcontext", HandledBy.FUSE, "CONTEXT", help="SELinux context of unlabelled files"),
    Option("rootcontext", HandledBy.FUSE, "CONTEXT", help="SELinux context of the root"),
)

# What mount(8), fstab and systemd read, and mount.fuse3 may pass on anyway.
IGNORED: tuple[Option, ...] = (
    *(
        Option(n, HandledBy.IGNORED)
        for n in _words("defaults auto noauto user nouser users owner group _netdev nofail")
    ),
    Option("user", HandledBy.IGNORED, "NAME"),  # libmount's record of a user mount
    Option("comment", HandledBy.IGNORED, "TEXT"),
    Option("x-", HandledBy.IGNORED, prefix=True),  # x-systemd.automount, x-gvfs-show, ...
)

HELPER: tuple[Option, ...] = (
    Option("setuid", HandledBy.HELPER, "USER", help="mount.fuse3 runs the daemon as USER"),
    Option(
        "drop_privileges",
        HandledBy.HELPER,
        help="mount.fuse3 mounts, then runs the daemon without privileges on /dev/fd/N",
    ),
)


# What mount.check_fuse_options accepts: the libfuse options by the kind of value.
LIBFUSE_FLAGS = frozenset(
    [*KERNEL_FLAGS, "debug", *(o.name for o in FUSE_OPTIONS if o.value is None)]
)
LIBFUSE_NUMBERS = frozenset(o.name for o in FUSE_OPTIONS if o.value == "N")
LIBFUSE_TEXTS = frozenset(o.name for o in FUSE_OPTIONS if o.value not in (None, "N"))


def table() -> list[Option]:
    return [
        *OURS,
        *(Option(f, HandledBy.FUSE) for f in KERNEL_FLAGS),
        *FUSE_OPTIONS,
        *IGNORED,
        *HELPER,
    ]


def _lookup(name: str, has_value: bool) -> Option | None:
    for opt in table():
        if opt.prefix and name.startswith(opt.name):
            return opt
        if opt.name == name and (opt.value is not None) == has_value:
            return opt
    return None


@dataclass
class Parsed:
    """What a list of `-o` arguments asks for."""

    # dest -> True (a flag) or the values given, in order (host=, context=, 9p=, log_file=)
    ours: dict[str, bool | list[str]] = field(default_factory=dict)
    fuse: list[str] = field(default_factory=list)  # for libfuse, as written
    ignored: list[str] = field(default_factory=list)
    helper: list[str] = field(default_factory=list)


def split(arguments: Iterable[str]) -> list[str]:
    """`-o a,b -o c` → [a, b, c]; empty items (a trailing comma) are dropped."""
    return [item for arg in arguments for item in arg.split(",") if item]


def parse(arguments: Iterable[str]) -> Parsed:
    """Sort every option into its kind; an unknown one is an OptionError."""
    parsed = Parsed()
    for item in split(arguments):
        name, eq, value = item.partition("=")
        opt = _lookup(name, bool(eq))
        if opt is None:
            raise OptionError(_unknown(name, bool(eq)))
        if eq and not value and opt.kind in (HandledBy.OURS, HandledBy.FUSE, HandledBy.HELPER):
            raise OptionError(f"-o {name}= needs a value ({name}={opt.value})")
        if opt.kind is HandledBy.OURS:
            assert opt.dest is not None
            if opt.value is None:
                parsed.ours[opt.dest] = True
            else:
                values = parsed.ours.setdefault(opt.dest, [])
                assert isinstance(values, list)
                values.append(value)
        elif opt.kind is HandledBy.FUSE:
            parsed.fuse.append(item)
        elif opt.kind is HandledBy.IGNORED:
            parsed.ignored.append(item)
        else:
            parsed.helper.append(item)
    return parsed


def _unknown(name: str, has_value: bool) -> str:
    for opt in table():
        if opt.name == name and not opt.prefix:
            if opt.value is None:
                return f"-o {name} takes no value"
            return f"-o {name} needs a value ({name}={opt.value})"
    return f"-o {name}: unknown option (dockerfs-fuse --help lists them)"


def help_text() -> str:
    """The -o options for --help and the man page: ours, then what is passed on."""
    lines = ["options of dockerfs-fuse, also as -o (for fstab and mount.fuse3):"]
    for opt in OURS:
        lines.append(f"  {_spelled(opt):<24}{opt.help}")
    lines.append("FUSE options, passed to libfuse:")
    for opt in FUSE_OPTIONS:
        lines.append(f"  {_spelled(opt):<24}{opt.help}")
    lines.append("kernel mount flags, passed to libfuse: " + " ".join(KERNEL_FLAGS))
    lines.append("mount.fuse3's own (it acts on them; the daemon never sees them):")
    for opt in HELPER:
        lines.append(f"  {_spelled(opt):<24}{opt.help}")
    words = [_spelled(o) + ("*" if o.prefix else "") for o in IGNORED]
    lines.append("accepted and ignored (for mount(8), fstab, systemd): " + " ".join(words))
    return "\n".join(lines)


def _spelled(opt: Option) -> str:
    return f"{opt.name}={opt.value}" if opt.value else opt.name
