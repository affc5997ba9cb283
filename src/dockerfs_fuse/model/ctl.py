"""The language of a container's `ctl` file, in the style of Plan 9's proc(3).

One command per write of at most MAX_COMMAND_BYTES: `start`, `stop [SECONDS]`, `restart [SECONDS]`,
`kill [SIGNAL]`, `pause`, `unpause`, `rm`. Parsing is pure so that every bad
input is rejected (EINVAL) before anything is sent to Docker.

A refused write tells its writer only an errno; the reason (Docker's
message) is kept per object for its `err` file (`Refusals`), where a user
without the daemon's log can read it.
"""

from __future__ import annotations

import collections
import signal
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

COMMANDS = ("start", "stop", "restart", "kill", "pause", "unpause", "rm")
_MAX_SECONDS = 24 * 3600
# The longest command is some 20 bytes. A longer write is refused whole: the
# kernel splits a large write, and a piece must never run as a command.
MAX_COMMAND_BYTES = 256


class BadCommand(ValueError):
    """The text written to ctl is not a command we accept."""


@dataclass(frozen=True)
class Command:
    action: str
    # Query parameters for the Docker API call (`t` for a timeout, `signal`).
    params: dict[str, str] = field(default_factory=dict)


def parse_signal(text: str) -> str:
    """KILL, SIGKILL, kill or 9 → Docker's canonical "SIGKILL"/"9" form."""
    if text.isdigit():
        number = int(text)
        if not 1 <= number <= signal.SIGRTMAX:
            raise BadCommand(f"signal number out of range: {text}")
        return text
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    if name not in signal.Signals.__members__ or name in ("SIG_DFL", "SIG_IGN"):
        raise BadCommand(f"unknown signal: {text}")
    return name


def _seconds(text: str) -> str:
    if not text.isdigit() or int(text) > _MAX_SECONDS:
        raise BadCommand(f"SECONDS must be a whole number from 0 to {_MAX_SECONDS}: {text}")
    return str(int(text))


def split_command(data: bytes, commands: tuple[str, ...]) -> tuple[str, list[str]]:
    """A write's command word (one of `commands`) and its arguments; bounded, ASCII."""
    if len(data) > MAX_COMMAND_BYTES:
        raise BadCommand(f"a command is at most {MAX_COMMAND_BYTES} bytes, not {len(data)}")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise BadCommand("commands are ASCII") from None
    words = text.split()
    if not words:
        raise BadCommand("empty command")
    if words[0] not in commands:
        raise BadCommand(f"unknown command {words[0]!r}; one of: {', '.join(commands)}")
    return words[0], words[1:]


def parse_command(data: bytes) -> Command:
    action, args = split_command(data, COMMANDS)
    if len(args) > 1 or (args and action not in ("stop", "restart", "kill")):
        raise BadCommand(f"too many arguments for {action}")
    if action in ("stop", "restart") and args:
        return Command(action, {"t": _seconds(args[0])})
    if action == "kill" and args:
        return Command(action, {"signal": parse_signal(args[0])})
    return Command(action)


# Objects whose last refusal is kept; the oldest is forgotten beyond (a
# container removed long ago needs no err file).
MAX_REFUSALS = 4096
# How much of the text written an err line repeats.
ERR_COMMAND_CHARS = 64


class Refusals:
    """The last refused ctl write of each object, as its `err` file shows it:
    one line, `2026-12-07T01:02:03Z pause: <why>`, in UTC; empty until a
    write is refused. In memory and bounded (MAX_REFUSALS objects)."""

    def __init__(self, limit: int = MAX_REFUSALS) -> None:
        self._last: collections.OrderedDict[Hashable, bytes] = collections.OrderedDict()
        self._limit = limit

    def note(self, key: Hashable, written: bytes, why: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        line = f"{stamp} {_shown(written)}: {' '.join(why.split())}\n"
        self._last[key] = line.encode("utf-8", "backslashreplace")
        self._last.move_to_end(key)
        while len(self._last) > self._limit:
            self._last.popitem(last=False)

    def text(self, key: Hashable) -> bytes:
        return self._last.get(key, b"")


def _shown(written: bytes) -> str:
    """The command as written, on one line and short: what the writer would recognise."""
    text = " ".join(written.decode("ascii", "backslashreplace").split())
    text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    if len(text) > ERR_COMMAND_CHARS:
        text = text[: ERR_COMMAND_CHARS - 3] + "..."
    return text or "(empty)"
