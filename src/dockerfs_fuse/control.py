"""The language of a container's `ctl` file, in the style of Plan 9's proc(3).

One command per write of at most MAX_COMMAND_BYTES: `start`, `stop [SECONDS]`, `restart [SECONDS]`,
`kill [SIGNAL]`, `pause`, `unpause`, `rm`. Parsing is pure so that every bad
input is rejected (EINVAL) before anything is sent to Docker.
"""

from __future__ import annotations

import signal
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
