"""The languages of the engine view's `clone` files, in the style of Plan 9's ip(3).

One request per write(2), at most MAX_LINE_BYTES, split into words as a
POSIX shell splits them (quotes, backslashes; never run by a shell). What a
line asks for becomes the request body it will be sent as, here, before
Docker hears of anything, so that every malformed line is refused (EINVAL)
with a reason that names the word at fault:

```
volumes/clone   create [-d|--driver D] [-l|--label K=V]... [-o|--opt K=V]... [NAME]
networks/clone  create [-d|--driver D] [--subnet CIDR]... [--internal] [-l|--label K=V]...
                       [-o|--opt K=V]... NAME
images/clone    pull REF | tag SRC DST
```

containers/clone's `run` and `create` lines are runline.py's; the option
parser they share is here.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockerfs_fuse.model.ctl import BadCommand

# The longest request a write may hold. Below the smallest piece the kernel
# splits a write into (128 KiB), so a longer write is refused at its first
# piece and no piece of one is ever taken for a whole request.
MAX_LINE_BYTES = 64 << 10


class BadLine(BadCommand):
    """A clone write that is not a request we accept; the message says which word is wrong."""


def decode_line(data: bytes) -> str:
    """The text of one write: bounded, UTF-8, no NUL, one trailing newline dropped."""
    if len(data) > MAX_LINE_BYTES:
        raise BadLine(f"a request is at most {MAX_LINE_BYTES} bytes, not {len(data)}")
    if b"\0" in data:
        raise BadLine("a request holds no NUL byte")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("a request is UTF-8 text") from None
    return text.removesuffix("\n")


def split_words(text: str) -> list[str]:
    """Words as a POSIX shell splits them (quotes and backslashes; no expansion)."""
    if "\n" in text:
        raise BadLine("one request per write: a line break inside it")
    try:
        return shlex.split(text, comments=False, posix=True)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise BadLine(f"cannot split the line into words: {exc}") from None


# -- options ------------------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """One option: its names (`-e`, `--env`), whether it takes a value, and
    the key its values are kept under."""

    names: tuple[str, ...]
    key: str
    takes_value: bool = True


@dataclass
class Parsed:
    """Options by key, each a list of values in the order given ("" for a flag), and the rest."""

    options: dict[str, list[str]] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)

    def last(self, key: str) -> str | None:
        values = self.options.get(key)
        return values[-1] if values else None

    def all(self, key: str) -> list[str]:
        return self.options.get(key, [])

    def given(self, key: str) -> bool:
        return key in self.options


def parse_options(words: Sequence[str], table: Sequence[Opt]) -> Parsed:
    """Options up to the first word that is not one (or `--`), as the docker
    CLI parses `run` (options after the image are the command's): `--name=x`,
    `--name x`, `-e K=V`, `-eK=V`, and flags bundled (`-it`)."""
    by_name = {name: opt for opt in table for name in opt.names}
    out = Parsed()
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            break
        i += 1
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            opt = by_name.get(name)
            if opt is None:
                raise BadLine(f"unknown option {name}")
            if not opt.takes_value:
                if eq:
                    raise BadLine(f"{name} takes no value")
                out.options.setdefault(opt.key, []).append("")
                continue
            if not eq:
                if i >= len(words):
                    raise BadLine(f"{name} needs a value")
                value = words[i]
                i += 1
            out.options.setdefault(opt.key, []).append(value)
            continue
        # One or more short options: flags first, then at most one that takes a value.
        j = 1
        while j < len(word):
            name = "-" + word[j]
            opt = by_name.get(name)
            if opt is None:
                raise BadLine(f"unknown option {name}" + (f" (in {word})" if len(word) > 2 else ""))
            j += 1
            if not opt.takes_value:
                out.options.setdefault(opt.key, []).append("")
                continue
            if j < len(word):
                value = word[j:].removeprefix("=")
            elif i < len(words):
                value = words[i]
                i += 1
            else:
                raise BadLine(f"{name} needs a value")
            out.options.setdefault(opt.key, []).append(value)
            break
    out.args = list(words[i:])
    return out


def key_values(values: Sequence[str], what: str, *, value_needed: bool = True) -> dict[str, str]:
    """`K=V` words as a mapping (a later K wins); `K` alone is K="" unless a value is needed."""
    out: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key or (value_needed and not eq):
            raise BadLine(f"{what} must be KEY=VALUE, not {item!r}")
        out[key] = value
    return out


def command_of(words: Sequence[str], commands: Sequence[str]) -> tuple[str, list[str]]:
    if not words:
        raise BadLine("empty request")
    if words[0] not in commands:
        raise BadLine(f"unknown request {words[0]!r}; one of: {', '.join(commands)}")
    return words[0], list(words[1:])


def _one_name(args: Sequence[str], what: str, *, required: bool) -> str:
    if len(args) > 1:
        raise BadLine(f"one {what} name, not {len(args)}: {' '.join(args)[:80]}")
    if required and not args:
        raise BadLine(f"a {what} needs a NAME")
    name = args[0] if args else ""
    if name.startswith("-"):
        raise BadLine(f"unknown option {name}")
    return name


# -- volumes/clone ------------------------------------------------------------

_VOLUME = (
    Opt(("-d", "--driver"), "driver"),
    Opt(("-l", "--label"), "label"),
    Opt(("-o", "--opt"), "opt"),
)


def parse_volume(data: bytes) -> dict[str, Any]:
    """`create [options] [NAME]` → the body of `POST /volumes/create` (no name:
    the engine names it)."""
    _, rest = command_of(split_words(decode_line(data)), ("create",))
    parsed = parse_options(rest, _VOLUME)
    body: dict[str, Any] = {
        "Name": _one_name(parsed.args, "volume", required=False),
        "Driver": parsed.last("driver") or "local",
        "DriverOpts": key_values(parsed.all("opt"), "--opt"),
        "Labels": key_values(parsed.all("label"), "--label", value_needed=False),
    }
    return body


# -- networks/clone -----------------------------------------------------------

_NETWORK = (
    Opt(("-d", "--driver"), "driver"),
    Opt(("--subnet",), "subnet"),
    Opt(("--internal",), "internal", takes_value=False),
    Opt(("-l", "--label"), "label"),
    Opt(("-o", "--opt"), "opt"),
)


def parse_network(data: bytes) -> dict[str, Any]:
    """`create [options] NAME` → the body of `POST /networks/create`."""
    _, rest = command_of(split_words(decode_line(data)), ("create",))
    parsed = parse_options(rest, _NETWORK)
    subnets = parsed.all("subnet")
    for subnet in subnets:
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise BadLine(f"--subnet must be a CIDR (10.1.2.0/24), not {subnet!r}") from None
        if "/" not in subnet:
            raise BadLine(f"--subnet must be a CIDR (10.1.2.0/24), not {subnet!r}")
    body: dict[str, Any] = {
        "Name": _one_name(parsed.args, "network", required=True),
        "Driver": parsed.last("driver") or "bridge",
        "Internal": parsed.given("internal"),
        "Options": key_values(parsed.all("opt"), "--opt"),
        "Labels": key_values(parsed.all("label"), "--label", value_needed=False),
        # Old engines allowed two networks of one name unless asked not to.
        "CheckDuplicate": True,
    }
    if subnets:
        body["IPAM"] = {"Driver": "default", "Config": [{"Subnet": s} for s in subnets]}
    return body


# -- images/clone -------------------------------------------------------------


@dataclass(frozen=True)
class Pull:
    """`pull REF`: `POST /images/create?fromImage=...&tag=...`."""

    ref: str
    image: str
    tag: str


@dataclass(frozen=True)
class Tag:
    """`tag SRC DST`: `POST /images/SRC/tag?repo=...&tag=...`."""

    source: str
    repo: str
    tag: str


def split_reference(ref: str) -> tuple[str, str]:
    """(repository, tag or digest) of an image reference; the tag is `latest`
    when none is given, as the docker CLI assumes."""
    if not ref or any(c.isspace() for c in ref) or ref.startswith("-"):
        raise BadLine(f"not an image reference: {ref!r}")
    if "@" in ref:
        repo, _, digest = ref.partition("@")
        if not repo or not digest:
            raise BadLine(f"not an image reference: {ref!r}")
        return repo, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        repo, tag = ref[:colon], ref[colon + 1 :]
        if not repo or not tag:
            raise BadLine(f"not an image reference: {ref!r}")
        return repo, tag
    return ref, "latest"


def parse_image(data: bytes) -> Pull | Tag:
    action, args = command_of(split_words(decode_line(data)), ("pull", "tag"))
    if action == "pull":
        if len(args) != 1:
            raise BadLine(f"pull takes one REF, not {len(args)} words")
        image, tag = split_reference(args[0])
        return Pull(args[0], image, tag)
    if len(args) != 2:
        raise BadLine(f"tag takes SRC and DST, not {len(args)} words")
    source = args[0]
    split_reference(source)
    repo, tag = split_reference(args[1])
    if "@" in args[1]:
        raise BadLine(f"a tag cannot be a digest: {args[1]!r}")
    return Tag(source, repo, tag)


def progress_line(message: Mapping[str, Any]) -> str:
    """One of a pull's progress messages as one line, as the docker CLI prints
    them without a terminal: `ID: Status PROGRESS`, or the status alone."""
    parts = [str(message.get(k) or "") for k in ("status", "progress")]
    text = " ".join(p for p in parts if p)
    ident = str(message.get("id") or "")
    line = f"{ident}: {text}" if ident else text
    return " ".join(line.split())  # one line, whatever the engine put in it
