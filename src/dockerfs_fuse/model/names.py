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
        self._by_name: dict[str, set[str]] = {}
        # IDs by their first MIN_PREFIX digits: a prefix scans one small bucket.
        self._by_head: dict[str, set[str]] = {}

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
            self._by_head.setdefault(cid[:MIN_PREFIX], set()).add(cid)
        else:
            self._unname(cid, old)
        self._names[cid] = names
        for name in names:
            self._by_name.setdefault(name, set()).add(cid)

    def drop(self, cid: str) -> None:
        old = self._names.pop(cid, None)
        if old is None:
            return
        self._unname(cid, old)
        head = self._by_head.get(cid[:MIN_PREFIX])
        if head is not None:
            head.discard(cid)
            if not head:
                del self._by_head[cid[:MIN_PREFIX]]

    def _unname(self, cid: str, names: tuple[str, ...]) -> None:
        for name in names:
            ids = self._by_name.get(name)
            if ids is not None:
                ids.discard(cid)
                if not ids:
                    del self._by_name[name]

    def resolve(self, name: str, *, prefixes: bool = True) -> str:
        """As containers.resolve_name over the containers put here: a full ID,
        then an exact name, then an ID prefix that matches exactly one; "" if none."""
        if name in self._names:
            return name
        named = self._by_name.get(name)
        if named:
            return min(named)  # Docker keeps names unique; min only makes a clash deterministic
        if not prefixes or len(name) < MIN_PREFIX or not all_hex(name):
            return ""
        matches = [c for c in self._by_head.get(name[:MIN_PREFIX], ()) if c.startswith(name)]
        return matches[0] if len(matches) == 1 else ""
