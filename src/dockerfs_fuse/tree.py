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
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias


class Special(enum.Enum):
    """Entries whose content is not in the list answer: made when opened or written.

    ROOT is a directory (the container's own filesystem, read through the
    engine); the others are files.
    """

    CTL = "ctl"
    LOGS = "logs"
    FOLLOW = "logs.follow"
    INSPECT = "inspect.json"
    ROOT = "root"
    TOP = "top"
    STATS = "stats"
    WAIT = "wait"


# A directory is a mapping of names to sub-directories, file contents or
# special files, in the order they are listed.
Spec: TypeAlias = "dict[str, Spec | bytes | Special]"
Container: TypeAlias = Mapping[str, Any]

# Each container directory, in listing order. The sub-directories are fixed,
# which lets the inode table give a container directory its link count
# without building it.
SUBDIRS = ("Names", "Labels", "Ports", "Mounts", "Networks", "root")
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
    "logs",
    "logs.follow",
    "inspect.json",
    "root",
    "top",
    "stats",
    "wait",
)


def container_id(c: Container) -> str:
    """The API spells it `Id`; the tree calls the file `ID`, as the Go server did."""
    return str(c.get("Id") or c.get("ID") or "")


def created_seconds(c: Container) -> int:
    try:
        return int(c.get("Created") or 0)
    except (TypeError, ValueError):
        return 0


def escape_name(key: str) -> str:
    """Make any string a single path component, reversibly.

    "%" and "/" are escaped as in URLs (the contract names these two). Names
    a directory cannot hold ("", ".", "..") and NUL, which no path can carry,
    are escaped the same way so that no label is silently dropped.
    """
    escaped = key.replace("%", "%25").replace("/", "%2F").replace("\0", "%00")
    if escaped in ("", ".", ".."):
        return "".join(f"%{ord(ch):02X}" for ch in escaped) or "%"
    return escaped


def unescape_name(name: str) -> str:
    """Inverse of escape_name, for tools that map files back to label keys."""
    if name == "%":
        return ""
    out: list[str] = []
    i = 0
    while i < len(name):
        if name[i] == "%" and _is_hex(name[i + 1 : i + 3]):
            out.append(chr(int(name[i + 1 : i + 3], 16)))
            i += 3
        else:
            out.append(name[i])
            i += 1
    return "".join(out)


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(ch in "0123456789abcdefABCDEF" for ch in s)


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
    files: Spec = {}
    for key, value in obj.items():
        if value is None or not _is_scalar(value):
            continue
        if skip_empty and value == "" and not isinstance(value, bool):
            continue
        files[escape_name(str(key))] = render(value)
    return files


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
        {escape_name(str(k)): render(v) for k, v in labels.items()}
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
        {escape_name(str(name)): scalar_files(n, skip_empty=True) for name, n in networks.items()}
        if isinstance(networks, Mapping)
        else {}
    )
    for special in Special:
        spec[special.value] = special
    return spec


def all_hex(text: str) -> bool:
    """Lower-case hex, as Docker prints IDs (and as ID prefixes are typed)."""
    return all(ch in "0123456789abcdef" for ch in text)
