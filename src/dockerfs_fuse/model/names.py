"""The containers of one top directory by ID, by name and by ID prefix.

Resolving a name as Docker does (containers.resolve_name) against a list
walks every container; a lookup of a name, a prefix or a miss (`ls`, shells
and editors probe many) must cost the same at ten thousand containers as at
ten. The index is kept up to date as containers come, change and go, each at
the cost of that one container.
"""

from __future__ import annotations

from dockerfs_fuse.model.containers import (
    MIN_PREFIX,
    Container,
    all_hex,
    container_id,
)


def names_of(c: Container) -> tuple[str, ...]:
    """A container's names as a path component spells them (the API's, less
    their leading "/")."""
    names = c.get("Names")
    if not isinstance(names, list):
        return ()
    return tuple(n[1:] for n in names if isinstance(n, str) and n.startswith("/"))


class NameIndex:
    """Which container an ID, a name or an ID prefix means, among those put here."""

    def __init__(self) -> None:
        self._names: dict[str, tuple[str, ...]] = {}  # ID -> its names
        # IDs by name, and by their first MIN_PREFIX digits (a prefix scans
        # one small bucket): one ID as itself, a set only for several (a
        # set is 216 bytes, and at 10,000 containers nearly all have one).
        self._by_name: dict[str, str | set[str]] = {}
        self._by_head: dict[str, str | set[str]] = {}

    def __len__(self) -> int:
        return len(self._names)

    def put(self, c: Container) -> None:
        """Add a container, or note its names again (a rename)."""
        cid = container_id(c)
        if not cid:
            return
        names = names_of(c)
        old = self._names.get(cid)
        if old == names:
            return
        if old is None:
            _add(self._by_head, cid[:MIN_PREFIX], cid)
        else:
            self._unname(cid, old)
        self._names[cid] = names
        for name in names:
            _add(self._by_name, name, cid)

    def drop(self, cid: str) -> None:
        old = self._names.pop(cid, None)
        if old is None:
            return
        self._unname(cid, old)
        _discard(self._by_head, cid[:MIN_PREFIX], cid)

    def _unname(self, cid: str, names: tuple[str, ...]) -> None:
        for name in names:
            _discard(self._by_name, name, cid)

    def resolve(self, name: str, *, prefixes: bool = True) -> str:
        """As containers.resolve_name over the containers put here: a full ID,
        then an exact name, then an ID prefix that matches exactly one; "" if none."""
        if name in self._names:
            return name
        named = self._by_name.get(name)
        if named:
            # Docker keeps names unique; min only makes a clash deterministic.
            return named if isinstance(named, str) else min(named)
        if not prefixes or len(name) < MIN_PREFIX or not all_hex(name):
            return ""
        head = self._by_head.get(name[:MIN_PREFIX], ())
        matches = [c for c in ((head,) if isinstance(head, str) else head) if c.startswith(name)]
        return matches[0] if len(matches) == 1 else ""


def _add(ids: dict[str, str | set[str]], key: str, cid: str) -> None:
    held = ids.get(key)
    if held is None:
        ids[key] = cid
    elif isinstance(held, str):
        if held != cid:
            ids[key] = {held, cid}
    else:
        held.add(cid)


def _discard(ids: dict[str, str | set[str]], key: str, cid: str) -> None:
    held = ids.get(key)
    if held == cid:
        del ids[key]
    elif isinstance(held, set):
        held.discard(cid)
        if len(held) == 1:
            ids[key] = next(iter(held))
