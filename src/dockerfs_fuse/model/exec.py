"""Exec sessions as files, in the style of Inferno's cmd(3): the pure part.

A container's `exec/` holds `clone` and one directory per live session,
`N/{ctl,data,stderr,status,wait}`. This module knows the language written
to a session's `ctl`, what `status` and `wait` say, and the bounds; the
engine (engine/exec.py) runs sessions and the FUSE side (fuse/exec.py)
serves their files. Every bad line is refused here (EINVAL) before Docker
hears of it.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass

from dockerfs_fuse.model.ctl import BadCommand, parse_signal

# The directory of a container that holds its sessions (behind `.live/`).
EXEC_DIR = "exec"
CLONE = "clone"


class ExecFile(enum.Enum):
    """A session's files, in listing order."""

    CTL = "ctl"
    DATA = "data"
    STDERR = "stderr"
    STATUS = "status"
    WAIT = "wait"


# One ctl write is one line: a command line of up to this many bytes (the
# kernel hands a write over in pieces of 128 KiB at most; a piece never runs).
MAX_LINE_BYTES = 16 << 10
# Arguments and environment entries of one command.
MAX_ARGS = 1024
VERBS = ("exec", "run", "kill", "eof", "killonclose")
# `kill` with no signal ends the command as `docker kill` does.
DEFAULT_KILL = "SIGKILL"


@dataclass(frozen=True)
class ExecSpec:
    """What to run: Docker's exec create body, in our words."""

    argv: tuple[str, ...]
    tty: bool = False
    user: str = ""
    workdir: str = ""
    env: tuple[str, ...] = ()
    # `run`: the command's stdout and stderr are read on the descriptor the
    # line was written to (the one-line form), in the order they come.
    merged: bool = False


@dataclass(frozen=True)
class CtlLine:
    verb: str
    spec: ExecSpec | None = None
    signal: str = DEFAULT_KILL


def parse_line(data: bytes) -> CtlLine:
    """One write to a session's ctl, or BadCommand (EINVAL)."""
    if len(data) > MAX_LINE_BYTES:
        raise BadCommand(f"a ctl line is at most {MAX_LINE_BYTES} bytes, not {len(data)}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadCommand("a ctl line is UTF-8") from None
    if "\0" in text:
        raise BadCommand("a ctl line holds no NUL")
    text = text.removesuffix("\n")
    if "\n" in text:
        raise BadCommand("one command per write")
    verb, _, rest = text.strip().partition(" ")
    if verb not in VERBS:
        raise BadCommand(f"unknown command {verb[:32]!r}; one of: {', '.join(VERBS)}")
    if verb in ("exec", "run"):
        return CtlLine(verb, spec=parse_exec(rest, merged=verb == "run"))
    words = rest.split()
    if verb == "kill":
        if len(words) > 1:
            raise BadCommand("kill takes at most one signal")
        return CtlLine(verb, signal=parse_signal(words[0]) if words else DEFAULT_KILL)
    if words:
        raise BadCommand(f"{verb} takes no arguments")
    return CtlLine(verb)


def parse_exec(text: str, *, merged: bool = False) -> ExecSpec:
    """`[-t] [-u USER] [-w DIR] [-e K=V]... [--] ARG...`, words split as a
    POSIX shell splits them (quotes, backslashes), never run through a shell."""
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise BadCommand(f"cannot split the command: {exc}") from None
    if len(words) > MAX_ARGS:
        raise BadCommand(f"at most {MAX_ARGS} words")
    tty, user, workdir, env = False, "", "", []
    i = 0
    while i < len(words) and words[i].startswith("-"):
        flag = words[i]
        i += 1
        if flag == "--":
            break
        if flag == "-t":
            tty = True
            continue
        if flag not in ("-u", "-w", "-e"):
            raise BadCommand(f"unknown option {flag[:32]!r}; -t, -u USER, -w DIR, -e K=V")
        if i >= len(words):
            raise BadCommand(f"{flag} needs a value")
        value = words[i]
        i += 1
        if flag == "-u":
            user = value
        elif flag == "-w":
            if not value.startswith("/"):
                raise BadCommand(f"-w needs an absolute path, not {value[:64]!r}")
            workdir = value
        else:
            if "=" not in value or value.startswith("="):
                raise BadCommand(f"-e needs K=V, not {value[:64]!r}")
            env.append(value)
    argv = tuple(words[i:])
    if not argv or not argv[0]:
        raise BadCommand("exec needs a command")
    return ExecSpec(argv, tty, user, workdir, tuple(env), merged)


class State(enum.Enum):
    RESERVED = "reserved"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"


def status_text(state: State, pid: int, code: int | None) -> bytes:
    """A session's `status`: "reserved", "running PID" or "exited CODE"."""
    if state is State.EXITED:
        return f"exited {code if code is not None else -1}\n".encode()
    if state is State.RUNNING:
        return f"running {pid}\n".encode()
    return b"reserved\n"


def is_session_name(name: str) -> bool:
    """A session directory's name: its number, as ctl reads it."""
    return name.isdigit() and not (len(name) > 1 and name.startswith("0")) and len(name) < 12
