"""What each container looks like as files: the contract of the tree.

Pure functions from one entry of Docker's `GET /containers/json` answer to a
nested mapping of names to file contents. No I/O and no FUSE here, so the
whole layout is unit-tested against recorded API answers, and the inode table
and the FUSE adapter never need to know a field name.

The first six entries are the fields of the original Go research server; the
rest are the other fields of the same answer, so one API call serves it all.
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar


class Special(enum.Enum):
    """Entries whose content is not in the list answer: made when opened or written.

    ROOT is a directory (the container's own filesystem, read through the
    engine), and so is EXEC (its exec sessions, model/exec.py); the others
    are files.
    """

    CTL = "ctl"
    ERR = "err"
    LOGS = "logs"
    FOLLOW = "logs.follow"
    INSPECT = "inspect.json"
    HISTORY = "history.json"
    ROOT = "root"
    TOP = "top"
    STATS = "stats"
    WAIT = "wait"
    EXEC = "exec"
    # The engine view's own (its root's `events`), never a container's.
    EVENTS = "events"


@dataclass(frozen=True)
class Link:
    """A symbolic link; `target` is relative to the directory that holds it."""

    target: str


# A directory is a mapping of names to sub-directories, file contents,
# special files or links, in the order they are listed.
Spec: TypeAlias = "dict[str, Spec | bytes | Special | Link]"
Container: TypeAlias = Mapping[str, Any]
T = TypeVar("T")


class Unlisted(dict[str, "Spec | bytes | Special | Link"]):
    """A directory that lists as empty: its entries answer by name only."""


# Every container directory holds one Unlisted directory of this name, with
# the entries a recursive tool must not open or enter: they block (wait,
# logs.follow), stream a whole log (logs), act (ctl, exec), cost a slow
# request (stats waits for Docker's next sample; top runs `ps` over the host's
# processes, so a walk of them all grows with containers times processes) or
# hold a whole filesystem (root). The container directory lists each as a
# link into it (`ctl -> .live/ctl`), and `grep -r`, `cp -r`, `tar`, `du` and
# `find` never follow a link below their arguments, while a path a user
# names does.
LIVE = ".live"
BEHIND_LINKS = frozenset(
    {
        Special.CTL,
        Special.LOGS,
        Special.FOLLOW,
        Special.ROOT,
        Special.TOP,
        Special.STATS,
        Special.WAIT,
        Special.EXEC,
    }
)

# A container directory's special entries, in listing order (the others
# belong to other objects: an image's history.json, the engine view's events).
CONTAINER_SPECIALS = tuple(s for s in Special if s not in (Special.HISTORY, Special.EVENTS))

# Each container directory, in listing order. The sub-directories are fixed,
# which lets the inode table give a container directory its link count
# without building it.
SUBDIRS = ("Names", "Labels", "Ports", "Mounts", "Networks", LIVE)
# The control and live views follow the list fields (see Special).
ORDER = (
    "ID",
    "Names",
    "Image",
    "ImageID",
    "Command",
    "Created",
    "State",
    "Status",
    "Labels",
    "Ports",
    "Mounts",
    "Networks",
    "ctl",
    "err",
    "logs",
    "logs.follow",
    "inspect.json",
    "root",
    "top",
    "stats",
    "wait",
    "exec",
    LIVE,
)


def container_id(c: Container) -> str:
    """The API spells it `Id`; the tree calls the file `ID`, as the Go server did."""
    return str(c.get("Id") or c.get("ID") or "")


def created_seconds(c: Container) -> int:
    try:
        return int(c.get("Created") or 0)
    except (TypeError, ValueError):
        return 0


# Linux's NAME_MAX: a longer name cannot be looked up, created or copied.
NAME_MAX = 255
# A name that would be longer keeps this many bytes of its escaped key...
SHORT_PREFIX_BYTES = 200
# ...then SHORT_MARK and this many hex digits of SHA-256 of the whole key.
SHORT_HASH_HEX = 12
# Never in an escaped name: every "%" there starts %XX or %uXXXX.
SHORT_MARK = "%~"
# One escape or one character: where an escaped name may be cut.
_TOKEN = re.compile(r"%u[0-9A-F]{4}|%[0-9A-F]{2}|.", re.DOTALL)


def escape_name(key: str) -> str:
    """Make any string a single path component of at most NAME_MAX bytes.

    "%" and "/" are escaped as in URLs (the contract names these two). Names
    a directory cannot hold ("", ".", "..") and NUL, which no path can carry,
    are escaped the same way so that no label is silently dropped; so are
    lone surrogates (%uXXXX), which no UTF-8 name can carry. A name still
    longer than NAME_MAX bytes is shortened (see shorten_name).
    """
    escaped = key.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    # isascii() first: a root listing escapes every container ID, at C speed.
    if not escaped.isascii() and any("\ud800" <= ch <= "\udfff" for ch in escaped):
        escaped = "".join(
            f"%u{ord(ch):04X}" if "\ud800" <= ch <= "\udfff" else ch for ch in escaped
        )
    if escaped in ("", ".", ".."):
        return "".join(f"%{ord(ch):02X}" for ch in escaped) or "%"
    if len(escaped.encode()) > NAME_MAX:
        return shorten_name(escaped, key)
    return escaped


def shorten_name(escaped: str, key: str) -> str:
    """`<first SHORT_PREFIX_BYTES of the escaped key>%~<12 hex of sha256(key)>`.

    The cut falls between characters and never inside an escape, so the
    prefix reads as the key begins. The hash is of the whole key's UTF-8
    bytes (`printf %s "$key" | sha256sum | cut -c1-12`), so a tool holding
    the keys (inspect.json has them all) can tell which file is which.
    """
    prefix, size = [], 0
    for token in _TOKEN.findall(escaped):
        size += len(token.encode())
        if size > SHORT_PREFIX_BYTES:
            break
        prefix.append(token)
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return "".join(prefix) + SHORT_MARK + digest[:SHORT_HASH_HEX]


def is_shortened(name: str) -> bool:
    """Whether escape_name cut this name (the key is then not recoverable from it)."""
    return SHORT_MARK in name


def unescape_name(name: str) -> str:
    """Inverse of escape_name, for tools that map files back to label keys.

    A shortened name has lost the end of its key: ValueError.
    """
    if is_shortened(name):
        raise ValueError(f"{name[:40]}...: a shortened name; the whole key is in inspect.json")
    if name == "%":
        return ""
    out: list[str] = []
    i = 0
    while i < len(name):
        if name[i] == "%" and _is_hex(name[i + 1 : i + 3]):
            out.append(chr(int(name[i + 1 : i + 3], 16)))
            i += 3
        elif name[i : i + 2] == "%u" and _is_hex(name[i + 2 : i + 6]):
            out.append(chr(int(name[i + 2 : i + 6], 16)))
            i += 6
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) in (2, 4) and all(ch in "0123456789abcdefABCDEF" for ch in s)


def named_entries(pairs: Iterable[tuple[Any, T]]) -> dict[str, T]:
    """Entries named by escape_name of their keys, none dropped.

    Distinct keys escape to distinct names unless both were shortened and
    their hashes' first digits agree; the later one then gets "~2" ("~3",
    ...) after the hash, in the API's order (Docker sorts label keys).
    """
    out: dict[str, T] = {}
    for key, value in pairs:
        name = escape_name(str(key))
        if name in out:
            n = 2
            while f"{name}~{n}" in out:
                n += 1
            name = f"{name}~{n}"
        out[name] = value
    return out


def render(value: Any) -> bytes:
    """A file's content: the value and one newline; booleans as true/false."""
    if value is True:
        text = "true"
    elif value is False:
        text = "false"
    elif value is None:
        text = ""
    else:
        text = str(value)
    return text.encode("utf-8", "surrogateescape") + b"\n"


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def scalar_files(obj: Any, *, skip_empty: bool) -> Spec:
    """One file per scalar field of an API object, in the API's order.

    Nested objects and lists are left out: the tree shows one level of
    fields, as the contract says. With skip_empty, null and "" are left out
    too (used for Networks, where most fields are empty on most hosts).
    """
    if not isinstance(obj, Mapping):
        return {}
    return named_entries(
        (key, render(value))
        for key, value in obj.items()
        if value is not None
        and _is_scalar(value)
        and not (skip_empty and value == "" and not isinstance(value, bool))
    )


def _listed(items: Any) -> Iterable[Any]:
    return items if isinstance(items, list) else ()


def _mappings(items: Any) -> list[Mapping[str, Any]]:
    return [x for x in _listed(items) if isinstance(x, Mapping)]


def _port_key(p: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(p.get(k, "")).zfill(5) for k in ("PrivatePort", "Type", "IP", "PublicPort"))


def _mount_key(m: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(str(m.get(k, "")) for k in ("Destination", "Source", "Type"))


def container_spec(c: Container) -> Spec:
    """The whole directory of one container."""
    spec: Spec = {"ID": render(container_id(c))}
    spec["Names"] = {str(i): render(name) for i, name in enumerate(_listed(c.get("Names")))}
    for field in ("Image", "ImageID", "Command"):
        spec[field] = render(c.get(field, ""))
    spec["Created"] = render(created_seconds(c))
    for field in ("State", "Status"):
        spec[field] = render(c.get(field, ""))
    labels = c.get("Labels")
    spec["Labels"] = (
        named_entries((k, render(v)) for k, v in labels.items())
        if isinstance(labels, Mapping)
        else {}
    )
    # The engine lists ports and mounts in Go map order, which changes from
    # one answer to the next; sorted, Mounts/0 stays the same mount.
    ports = sorted(_mappings(c.get("Ports")), key=_port_key)
    spec["Ports"] = {str(i): scalar_files(p, skip_empty=False) for i, p in enumerate(ports)}
    mounts = sorted(_mappings(c.get("Mounts")), key=_mount_key)
    spec["Mounts"] = {str(i): scalar_files(m, skip_empty=False) for i, m in enumerate(mounts)}
    networks = (c.get("NetworkSettings") or {}).get("Networks") or {}
    spec["Networks"] = (
        named_entries((name, scalar_files(n, skip_empty=True)) for name, n in networks.items())
        if isinstance(networks, Mapping)
        else {}
    )
    for special in CONTAINER_SPECIALS:
        spec[special.value] = live_link(special) if special in BEHIND_LINKS else special
    # The same for every container: one object, which nothing changes.
    spec[LIVE] = _CONTAINER_LIVE
    return spec


_CONTAINER_LIVE = Unlisted({s.value: s for s in CONTAINER_SPECIALS if s in BEHIND_LINKS})


def live_link(special: Special) -> Link:
    """The listed link to a special entry of the unlisted LIVE directory beside it."""
    return Link(f"{LIVE}/{special.value}")


def all_hex(text: str) -> bool:
    """Lower-case hex, as Docker prints IDs (and as ID prefixes are typed)."""
    return all(ch in "0123456789abcdef" for ch in text)


# What Docker takes for a name (a container's, a service's, a node's), and what
# IDs and their prefixes are made of: anything else names nothing, and must not
# reach a URL path ("..", "?", "/").
_DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def could_name_a_container(name: str) -> bool:
    """Docker names are [a-zA-Z0-9][a-zA-Z0-9_.-]*; IDs and prefixes are hex."""
    return bool(_DOCKER_NAME.fullmatch(name))


def could_name_an_object(name: str) -> bool:
    """A Swarm service's or node's name or ID: a Docker name of at most NAME_MAX."""
    return len(name) <= NAME_MAX and could_name_a_container(name)


# Fewer hex digits are refused as prefixes: `ls` and shells probe short names.
MIN_PREFIX = 4


def resolve_name(name: str, containers: Iterable[Container], *, prefixes: bool = True) -> str:
    """The ID of the container `name` means to Docker, or "" (unknown or ambiguous).

    Docker's own order (GetContainer): a full ID, then an exact name (the
    API spells names with a leading "/"), then an ID prefix that matches
    exactly one container. The answer is only as right as `containers` is
    whole: Docker compares against all containers, stopped ones included.
    """
    listed = [c for c in containers if isinstance(c, Mapping)]
    if any(container_id(c) == name for c in listed):
        return name
    slashed = "/" + name
    for c in listed:
        names = c.get("Names")
        if isinstance(names, list) and slashed in names:
            return container_id(c)
    if not prefixes or len(name) < MIN_PREFIX or not all_hex(name):
        return ""
    matches = {container_id(c) for c in listed if container_id(c).startswith(name)}
    return matches.pop() if len(matches) == 1 else ""
