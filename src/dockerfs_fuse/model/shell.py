"""Shell commands for a container's long-lived `sh` (engine/channel.py), pure.

A command is one line of ASCII that no path or content byte can break out
of: every argument and every content byte travels inside a single-quoted
`printf` format, printable ASCII as itself and every other byte (quotes,
backslashes, `%`, newlines, control bytes, NUL, non-ASCII) as a `\\ooo`
octal escape, which `printf` turns back into the byte. An argument is read
into a variable by command substitution with a sentinel after it, then
stripped (`$(...)` drops trailing newlines, which a name may end with).

After each command the shell prints an acknowledgement line: a newline, a
nonce random per channel and the command's exit status. What the command
said (its stderr, led into stdout) comes before it. No name can forge an
acknowledgement: names travel escaped, and a tool that repeats one in its
complaint cannot know the nonce.
"""

from __future__ import annotations

import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass

# Bytes that travel as themselves: printable ASCII but for the three that a
# single-quoted printf format would read otherwise.
_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("'"), ord("\\"), ord("%")}
_ESCAPES = tuple(chr(b) if b in _PLAIN else f"\\{b:03o}" for b in range(256))
# Content bytes per printf: one builtin's format stays far below an exec's
# argument limit (128 KiB) where printf is no builtin.
PRINTF_CHUNK = 4096
# What is kept of a command's output before its acknowledgement.
OUTPUT_KEPT = 4096
# The sentinel each argument's substitution ends with, stripped after.
_SENTINEL = "_"


def escaped(data: bytes) -> str:
    """`data` as a printf format that prints exactly it: ASCII, no quote,
    and no leading `-` (which printf would take for an option)."""
    text = "".join(_ESCAPES[b] for b in data)
    return "\\055" + text[1:] if text.startswith("-") else text


def _assign(var: str, value: bytes) -> str:
    """`var` set to exactly `value`: quoted as it is when every byte is
    plain (no process), else printed by a substitution."""
    if all(b in _PLAIN for b in value):
        return f"{var}='{value.decode('ascii')}'"
    return f"{var}=$(printf '{escaped(value)}{_SENTINEL}'); {var}=${{{var}%{_SENTINEL}}}"


def _encoded(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def run_command(argv: Sequence[str | bytes]) -> str:
    """`argv` run as the shell would exec it, each word as its exact bytes."""
    assigns = [_assign(f"a{i}", _encoded(word)) for i, word in enumerate(argv)]
    words = " ".join(f'"$a{i}"' for i in range(len(argv)))
    return "; ".join([*assigns, words])


def upload_command(
    temp: str, target: str, content: bytes, mode: int, uid: int, gid: int, mtime: int | None
) -> str:
    """Write `content` to `temp`, give it its mode, owner and (if given)
    mtime, then rename it onto `target`: a reader sees the old file or the
    new one. If any step fails, `temp` is removed and the status is that
    step's."""
    parts = [_assign("t", _encoded(temp)), _assign("p", _encoded(target))]
    chunks = [
        f"printf '{escaped(content[i : i + PRINTF_CHUNK])}'"
        for i in range(0, len(content), PRINTF_CHUNK)
    ]
    bits = stat.S_IMODE(mode)
    tools = ["chown", "chmod", "mv", "rm"]
    if mtime is not None:
        tools.append("touch")
    steps = [
        # Every tool there before anything is made (status 127 as the shell's own).
        "{ " + " && ".join(f"command -v {tool}" for tool in tools) + "; } >/dev/null || (exit 127)",
        # Made no wider than its mode; then given exactly its mode by chmod
        # (after chown, which clears setuid): a directory's default ACL
        # overrides the umask, as it would not a PUT's mode.
        f"umask {0o777 & ~bits:03o}",
        "{ " + "; ".join([":", *chunks]) + '; } >"$t"',
        f'chown {uid}:{gid} "$t"',
        f'chmod {bits:o} "$t"',
    ]
    if mtime is not None:
        steps.append(f'touch -c -d @{mtime} "$t"')
    steps.append('mv -f -T "$t" "$p"')
    parts.append(" && ".join(steps) + ' || { c=$?; rm -f "$t"; (exit $c); }')
    return "; ".join(parts)


def framed(command: str, nonce: str) -> bytes:
    """One line for the shell: `command` with no stdin and its stderr in its
    stdout, then the acknowledgement of its status."""
    return f"{{ {command}\n}} </dev/null 2>&1; printf '\\n%s %d\\n' {nonce} \"$?\"\n".encode(
        "ascii"
    )


def hello(nonce: str) -> bytes:
    """The first line: only an acknowledgement, that says the shell reads."""
    return f"printf '\\n%s %d\\n' {nonce} 0\n".encode("ascii")


@dataclass(frozen=True)
class Ack:
    """One command's end: its exit status and the start of what it said."""

    code: int
    output: bytes


class AckReader:
    """The shell's stdout, fed as it arrives, split into acknowledgements."""

    def __init__(self, nonce: str) -> None:
        self._marker = f"\n{nonce} ".encode("ascii")
        self._ack = re.compile(re.escape(self._marker) + rb"(\d{1,3})\n")
        self._kept = bytearray()  # the current command's output, its start
        self._tail = bytearray()  # not yet searched to its end

    def feed(self, data: bytes) -> list[Ack]:
        """The acknowledgements `data` completes, in order."""
        self._tail += data
        acks: list[Ack] = []
        while True:
            found = self._ack.search(self._tail)
            if found is None:
                break
            self._keep(self._tail[: found.start()])
            acks.append(Ack(int(found.group(1)), bytes(self._kept)))
            self._kept.clear()
            del self._tail[: found.end()]
        # Output beyond what can still start an acknowledgement is kept (up
        # to its bound) and dropped from what is searched.
        hold = len(self._marker) + 4
        if len(self._tail) > hold:
            self._keep(self._tail[:-hold])
            del self._tail[:-hold]
        return acks

    def _keep(self, data: bytes | bytearray) -> None:
        room = OUTPUT_KEPT - len(self._kept)
        if room > 0:
            self._kept += data[:room]
