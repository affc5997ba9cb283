"""The inode table: stable numbers for the nodes of the container tree.

Pure bookkeeping, no FUSE and no I/O, so the rules the kernel relies on are
unit-tested directly:

- a node keeps its inode number for as long as its path exists;
- numbers are never reused (a 64-bit counter), so a number the kernel still
  holds a lookup count for can never point at another node;
- a node that leaves the tree while the kernel still counts lookups on it is
  kept, marked gone, until `forget` brings its count to zero.

Containers live under a "top" directory: the root in a one-engine mount, or
an engine's directory (a child of the root, made with `add_dir`) when the
mount shows several engines, or the `containers/` made below either in the
engine view. Every container operation names its top, so
each engine's cache owns its subtree and the numbering stays one table's:
numbers are unique across engines and never reused.

Container directories are built lazily from the API answer the first time
anything inside them is asked for, so a listing of a thousand containers
costs a thousand small objects, not twenty thousand. Once the kernel holds
nothing below a built one (it forgot a walk), it is folded: its nodes are
let go, and the next lookup rebuilds it with the same numbers. Those follow
from the container's own number (a block of them is kept after it, given
in the order a build makes the nodes), so a fold keeps nothing unless the
nodes changed since the first build (then their numbers, by path): a walk
of ten thousand containers is ~37 nodes each while the kernel caches them,
and nothing but their own directories once it forgot them.

A top directory lists some containers (the running ones, without -a) and
can reach others by name: a stopped container's directory is "unlisted",
found by `lookup` and by aliases but never in `children`, so that
`echo start > web/ctl` works on the mount that stopped it.
"""

from __future__ import annotations

import enum
import stat
from array import array
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from dockerfs_fuse.model.containers import (
    LIVE,
    SUBDIRS,
    Container,
    Link,
    Spec,
    Special,
    Unlisted,
    container_id,
    container_spec,
    created_seconds,
    escape_name,
)
from dockerfs_fuse.model.files import Entry
from dockerfs_fuse.model.names import NameIndex
from dockerfs_fuse.model.swarm import Tree

ROOT_INODE = 1
NS = 1_000_000_000
# Numbers kept for the nodes of each container directory, right after its
# own: its nodes, in the order the first build makes them, are numbered
# from it (_renumber), so a folded container needs no record of them.
CONTAINER_BLOCK = 256
LIVE_PREFIX = LIVE + "/"  # the paths of .live/'s entries below a container
# Distinct paths below containers whose strings are shared by the records
# of folded containers (most have the same few dozen); past this many,
# sharing starts over.
SHARED_PATHS = 4096
# Contents up to this long are shared between nodes that say the same
# (SHARED_PATHS of them at a time).
SHARED_BYTES_MAX = 256
# Fields of a container's answer that no other container's has the same.
_UNIQUE_FIELDS = frozenset(("Id", "Names", "Created"))


class Kind(enum.Enum):
    DIR = "dir"
    FILE = "file"
    LINK = "link"


class Node:
    """A file or a link of the tree, or (DirNode) a directory.

    A file carries none of a directory's fields: at ten thousand walked
    containers the table holds ~370,000 nodes, most of them files, and
    each slot is 3 MB. Read on a file, those fields say "none"; setting
    one to anything but that is a bug (AttributeError)."""

    __slots__ = (
        "data",
        "entry",
        "gone",
        "inode",
        "kind",
        "lookups",
        "mtime_ns",
        "name",
        "parent",
        "special",
    )

    def __init__(
        self,
        inode: int,
        name: str,
        kind: Kind,
        mtime_ns: int,
        *,
        data: bytes = b"",
        parent: Node | None = None,
    ) -> None:
        self.inode = inode
        self.name = name
        self.kind = kind
        self.mtime_ns = mtime_ns
        self.data = data
        # Files made when opened (ctl, logs...): what to make.
        self.special: Special | None = None
        self.lookups = 0
        self.gone = False
        self.parent = parent
        # Nodes under a container's root/ only: what the engine says the path is.
        self.entry: Entry | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inode}, {self.name!r}, {self.kind.value})"

    @property
    def children(self) -> dict[str, Node] | None:
        """Directories only: children by name, in listing order; None until built."""
        return None

    @children.setter
    def children(self, value: dict[str, Node] | None) -> None:
        if value:
            raise AttributeError(f"{self.name}: not a directory")

    @property
    def subdirs(self) -> int:
        return 0

    @subdirs.setter
    def subdirs(self, value: int) -> None:
        if value:
            raise AttributeError(f"{self.name}: not a directory")

    @property
    def raw(self) -> Container | None:
        """Container directories only: the API answer the children are built from."""
        return None

    @raw.setter
    def raw(self, value: Container | None) -> None:
        if value is not None:
            raise AttributeError(f"{self.name}: not a directory")

    @property
    def pending(self) -> Tree | Deferred | None:
        """Directories only: their contents, built on first use (object
        directories, a container's .live/)."""
        return None

    @pending.setter
    def pending(self, value: Tree | Deferred | None) -> None:
        if value is not None:
            raise AttributeError(f"{self.name}: not a directory")

    @property
    def unlisted(self) -> bool:
        """A directory that lists as empty and is left out of its parent's
        listing (tree.Unlisted): its entries answer by name only."""
        return False

    @unlisted.setter
    def unlisted(self, value: bool) -> None:
        if value:
            raise AttributeError(f"{self.name}: not a directory")

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def nlink(self) -> int:
        # A tar does not count a directory's links: 1, "unknown", for those under root/.
        return 2 + self.subdirs if self.kind is Kind.DIR and self.entry is None else 1


class DirNode(Node):
    """A directory: a node with children (see Node for each field)."""

    __slots__ = ("children", "pending", "raw", "subdirs", "unlisted")

    children: dict[str, Node] | None
    subdirs: int
    raw: Container | None
    pending: Tree | Deferred | None
    unlisted: bool

    def __init__(
        self,
        inode: int,
        name: str,
        mtime_ns: int,
        *,
        parent: Node | None = None,
        children: dict[str, Node] | None = None,
    ) -> None:
        super().__init__(inode, name, Kind.DIR, mtime_ns, parent=parent)
        self.children = children
        self.subdirs = 0
        self.raw = None
        self.pending = None
        self.unlisted = False


@dataclass(frozen=True, slots=True)
class Deferred:
    """An object directory's contents, made only when something in it is
    first asked for, with its count of subdirectories known without making
    them: every listing reports each entry's link count, and a first listing
    of 500 volumes then makes none of their contents."""

    make: Callable[[], Tree]
    subdirs: int


@dataclass(frozen=True, slots=True)
class _Numbers:
    """The numbers of a folded container's nodes, by path below it, when
    they are not the ones its first build gave (`paths[i]` had `numbers[i]`)."""

    paths: tuple[str, ...]
    numbers: array[int]

    def by_path(self) -> dict[str, int]:
        return dict(zip(self.paths, self.numbers, strict=True))


@dataclass
class Changes:
    """What a refresh changed that the kernel may have cached.

    `removed` holds (parent inode, name, inode) of entries the kernel has
    looked up and must drop; `changed` holds looked-up inodes whose content
    changed, whatever its length: "Up 5 minutes" becoming "Up 6 minutes" keeps
    the size, but a kernel that caches pages must still drop the old ones. A
    directory's content is its listing, which the kernel may cache too.
    """

    removed: list[tuple[int, str, int]] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.removed or self.changed)


class InodeTable:
    def __init__(self, root_mtime_ns: int = 0) -> None:
        self._next = ROOT_INODE + 1
        self.root: Node = DirNode(ROOT_INODE, "", root_mtime_ns, children={})
        self._nodes: dict[int, Node] = {ROOT_INODE: self.root}
        # Symlinks for names and ID prefixes, made on lookup, never listed;
        # per top directory (by its inode).
        self._aliases: dict[int, dict[str, Node]] = {}
        # Container directories reachable but not listed, per top directory:
        # kept while the kernel holds them (see `forget`), or until a listing.
        self._unlisted: dict[int, dict[str, Node]] = {}
        # Every container under a top directory, listed or not, by ID, name and
        # prefix: a lookup resolves a name without walking them all.
        self._names: dict[int, NameIndex] = {}
        # Entries no listing of their directory replaces (the engine view's
        # `clone` and `.live/`), per directory: found first, listed first.
        self._fixed: dict[int, dict[str, Node]] = {}
        # Per built container directory, how many nodes below it the kernel
        # holds: at zero it is folded (`_fold`).
        self._held: dict[int, int] = {}
        # Folded container directories whose nodes had the numbers their first
        # build gave (a rebuild gives them again), and those whose did not,
        # with a record of them. Nothing is made per container for the
        # first: what the walk made is all freed, not kept in place by it.
        self._folded_plain: set[int] = set()
        self._folded: dict[int, _Numbers] = {}
        self._paths: dict[str, str] = {}
        self._bytes: dict[bytes, bytes] = {}  # contents shared by the nodes (_shared)
        self._values: dict[object, Any] = {}  # parts shared by the answers kept (_kept)
        self.folds = 0  # container directories folded so far
        self._nodes_peak = 1  # the most nodes held at once since _nodes was made
        # While a container's nodes are made in a build: the next number of
        # its block (CONTAINER_BLOCK) and the block's end.
        self._block: tuple[int, int] | None = None
        # Called with each directory of a container about to be folded, the
        # container's own first, entries still in place: what a view keeps
        # for them (by number) goes too.
        self.fold_listeners: list[Callable[[Node], None]] = []
        # Called with the number of each node that left the tree (removed,
        # not folded) once the kernel holds it no more: what a view keeps
        # for it (by number) goes too.
        self.gone_listeners: list[Callable[[int], None]] = []

    # -- queries -------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, inode: int) -> bool:
        return inode in self._nodes

    def get(self, inode: int) -> Node:
        """Raise KeyError for an inode the table does not hold (or no longer holds)."""
        return self._nodes[inode]

    def lookup(self, parent: Node, name: str) -> Node | None:
        if name == ".":
            return parent
        if name == "..":
            return parent.parent or self.root
        fixed = self._fixed.get(parent.inode)
        if fixed is not None and name in fixed:
            return fixed[name]
        node = self.children(parent).get(name)
        if node is None and parent.inode in self._unlisted:
            return self._unlisted[parent.inode].get(name)
        return node

    def unlisted(self, top: Node) -> dict[str, Node]:
        """The container directories under `top` that lookups reach and listings do not show."""
        return self._unlisted.get(top.inode, {})

    def held(self, top: Node) -> list[str]:
        """IDs of the listed containers under `top` that the kernel holds."""
        return [container_id(n.raw) for n in self.children(top).values() if n.lookups and n.raw]

    def children(self, node: Node) -> dict[str, Node]:
        """A directory's children, building a container directory on first use."""
        if node.children is None:
            if node.pending is not None:
                pending, node.pending = node.pending, None
                self._block = self._live_block(node)
                try:
                    self._reconcile(node, made(pending), Changes())
                finally:
                    self._block = None
            elif not node.is_dir:
                return {}
            elif node.raw is None:
                node.children = {}
            else:
                numbers = self._folded.pop(node.inode, None)
                if numbers is None:
                    self._block = (node.inode + 1, node.inode + CONTAINER_BLOCK)
                try:
                    # Rebuilt from a record that has .live/'s entries: .live/ too,
                    # so that they get theirs. A record made while .live/ was
                    # never built has none: it stays to be made when first looked
                    # into, from its own restored number (_live_block), as before.
                    whole = numbers is not None and any(
                        p.startswith(LIVE_PREFIX) for p in numbers.paths
                    )
                    self._reconcile(node, container_spec(node.raw), Changes(), whole=whole)
                finally:
                    self._block = None
                self._folded_plain.discard(node.inode)
                self._renumber(node, numbers)
        assert node.children is not None
        return node.children

    def folded(self) -> int:
        """How many container directories are folded (the kernel forgot what was below)."""
        return len(self._folded_plain) + len(self._folded)

    def holding(self) -> int:
        """How many built container directories the kernel holds something below."""
        return len(self._held)

    def listed(self, node: Node) -> list[tuple[str, Node]]:
        """A directory's listing: its children but unlisted ones; none for an unlisted one."""
        if node.unlisted:
            return []
        fixed = self._fixed.get(node.inode, {})
        return [
            *((name, c) for name, c in fixed.items() if not c.unlisted),
            *((name, c) for name, c in self.children(node).items()
              if not c.unlisted and name not in fixed),
        ]  # fmt: skip

    def alias(self, name: str, *, by_prefix: bool = True, top: Node | None = None) -> Node | None:
        """A symlink to the container a name or unambiguous ID prefix means.

        Resolved as Docker does (names.NameIndex) among the containers the
        table holds under `top` (the root by default). Ambiguous or unknown:
        None. `by_prefix=False` when the table holds only some containers (no
        -a): a prefix unique among the running ones may still be ambiguous to
        Docker, so the caller asks Docker and records its answer with `link`.
        """
        top = top or self.root
        node = self._aliases.get(top.inode, {}).get(name)
        if node is not None:
            return node
        return self._link(top, name, self._resolve(top, name, by_prefix))

    def link(self, name: str, cid: str, top: Node | None = None) -> Node | None:
        """An alias to a listed container that Docker itself resolved `name` to."""
        top = top or self.root
        return self._aliases.get(top.inode, {}).get(name) or self._link(top, name, cid)

    def _link(self, top: Node, name: str, cid: str) -> Node | None:
        target = self.lookup(top, escape_name(cid)) if cid else None
        if target is None or target.gone:
            return None
        node = self._new_node(top, name, Kind.LINK, target.mtime_ns)
        # Relative, to a sibling: right at any depth (the root or an engine's directory).
        node.data = target.name.encode()
        self._aliases.setdefault(top.inode, {})[name] = node
        return node

    def _resolve(self, top: Node, name: str, by_prefix: bool) -> str:
        index = self._names.get(top.inode)
        return index.resolve(name, prefixes=by_prefix) if index is not None else ""

    def _index(self, top: Node) -> NameIndex:
        index = self._names.get(top.inode)
        if index is None:
            index = self._names[top.inode] = NameIndex()
        return index

    def _drop_aliases(self, top: Node, changes: Changes) -> None:
        """Names can move to other containers: aliases live until the next change."""
        for node in self._aliases.pop(top.inode, {}).values():
            self._drop(top, node, changes)

    def drop_aliases(self, top: Node) -> Changes:
        """Forget the aliases made under `top` (its entries changed)."""
        changes = Changes()
        self._drop_aliases(top, changes)
        return changes

    def add_dir(self, name: str, mtime_ns: int = 0, parent: Node | None = None) -> Node:
        """A fixed directory: an engine's in the root, in a several-engine mount,
        a swarm view's services/, nodes/ and tasks/, or the engine view's
        containers/, images/, volumes/, networks/ and projects/."""
        parent = parent or self.root
        node = self._new_node(parent, name, Kind.DIR, mtime_ns or parent.mtime_ns)
        node.children = {}
        if parent.children is None:
            parent.children = {}
        parent.children[name] = node
        parent.subdirs = sum(1 for c in parent.children.values() if c.is_dir)
        return node

    def add_fixed(
        self, parent: Node, name: str, kind: Kind, *, data: bytes = b"", unlisted: bool = False
    ) -> Node:
        """An entry of `parent` that no listing of it replaces or drops: the
        engine view's `clone` link and its unlisted `.live/` (an object of
        the same name is shadowed by it)."""
        node = self._new_node(parent, name, kind, parent.mtime_ns)
        node.data = data
        node.unlisted = unlisted
        if kind is Kind.DIR:
            node.children = {}
        self._fixed.setdefault(parent.inode, {})[name] = node
        return node

    def add_entries(self, parent: Node, spec: Spec) -> None:
        """Fixed entries after those a fixed directory has (the engine view's
        `events` and the unlisted `.live/` it leads into)."""
        scratch = DirNode(0, "", parent.mtime_ns, children={})
        self._reconcile(scratch, spec, Changes())
        children = parent.children if parent.children is not None else {}
        for name, child in (scratch.children or {}).items():
            child.parent = parent
            children[name] = child
        parent.children = children
        parent.subdirs += scratch.subdirs

    def add_file(self, name: str, parent: Node) -> Node:
        """A file of a directory whose children a view makes (a container's exec/)."""
        node = self._new_node(parent, name, Kind.FILE, parent.mtime_ns)
        if parent.children is None:
            parent.children = {}
        parent.children[name] = node
        return node

    def set_objects(
        self,
        parent: Node,
        objects: Mapping[str, tuple[int, Tree | Deferred]],
        changes: Changes,
        *,
        lazy: bool = False,
    ) -> None:
        """Make `parent` list exactly these directories (name -> mtime, contents),
        keeping the inodes of kept names: the swarm view's services, nodes,
        tasks; the engine view's images, volumes, networks, projects. `lazy`:
        a directory nothing inside of was asked for is built when something is."""
        old = parent.children or {}
        new: dict[str, Node] = {}
        for name, (mtime_ns, spec) in objects.items():
            node = old.get(name)
            if node is None:
                node = self._new_node(parent, name, Kind.DIR, mtime_ns)
            if lazy and node.children is None:
                # Nothing inside was asked for: built when something is (a
                # first listing of 500 images builds none of their files).
                node.pending = spec
                node.subdirs = spec.subdirs if isinstance(spec, Deferred) else subdirs_of(spec)
            else:
                self._reconcile(node, made(spec), changes)
            new[name] = node
        for name, node in old.items():
            if name not in new:
                self._drop(parent, node, changes)
        if parent.lookups and list(new) != list(old):
            changes.changed.append(parent.inode)
        parent.children = new
        parent.subdirs = len(new)

    # -- the kernel's lookup counts -------------------------------------------

    def remember(self, node: Node) -> None:
        """The kernel now holds one more reference (lookup, readdirplus entry)."""
        if not node.lookups:
            container = _container_above(node)
            if container is not None:
                self._held[container.inode] = self._held.get(container.inode, 0) + 1
        node.lookups += 1

    def forget(self, inode: int, count: int) -> None:
        node = self._nodes.get(inode)
        if node is None or inode == ROOT_INODE:
            return
        held = node.lookups
        node.lookups = max(0, node.lookups - count)
        if node.lookups:
            return
        container = _container_above(node) if held else None
        if container is not None:
            left = self._held.pop(container.inode, 0) - 1
            if left > 0:
                self._held[container.inode] = left
            else:
                self._fold(container)
        elif node.raw is not None and node.inode not in self._held:
            self._fold(node)  # a container directory built by a lookup that found nothing
        if node.gone:
            self._let_go_of(inode)  # folded just now, or dropped before
        elif node.parent is not None and self.unlisted(node.parent).get(node.name) is node:
            # Nobody holds an unlisted container any more: a lookup asks again.
            del self._unlisted[node.parent.inode][node.name]
            self._index(node.parent).drop(container_id(node.raw or {}))
            self._drop(node.parent, node, Changes())

    # -- refresh -----------------------------------------------------------------

    def set_containers(
        self,
        containers: Sequence[Container],
        top: Node | None = None,
        unlisted: Mapping[str, Container | None] | None = None,
    ) -> Changes:
        """Make `top` (the root by default) list exactly these containers, keeping known inodes.

        `unlisted` holds fresh answers, by ID, for containers the listing
        leaves out (None: the engine no longer has it). A held container
        that the listing drops stays reachable, unlisted, if it has an
        answer (so its State says `exited`, never what it said while
        running), and goes if not. An unlisted container whose answer is
        None goes, and so does one that nobody holds.
        """
        top = top or self.root
        answers = unlisted or {}
        changes = Changes()
        self._drop_aliases(top, changes)
        old = top.children or {}
        kept = self._unlisted.pop(top.inode, {})
        index = self._index(top)
        new: dict[str, Node] = {}
        for c in containers:
            cid = container_id(c)
            name = escape_name(cid)
            if not cid or name in new:
                continue
            node = old.get(name) or kept.pop(name, None)
            if node is None:
                node = self._new_container(top, c)
            else:
                self._update_container(node, c, changes)
            # By the name kept, not this answer's copy: nothing of an answer
            # that says the same outlives the listing.
            new[node.name] = node
            index.put(node.raw or c)
        still: dict[str, Node] = {}
        dropped = [(node, True) for name, node in old.items() if name not in new]
        for node, was_listed in [*dropped, *((node, False) for node in kept.values())]:
            cid = container_id(node.raw or {})
            answer = answers.get(cid) if cid in answers or was_listed else node.raw
            if answer is not None and node.lookups:
                self._update_container(node, answer, changes)
                still[node.name] = node
                index.put(node.raw or answer)
            else:
                index.drop(cid)
                self._drop(top, node, changes)
        if still:
            self._unlisted[top.inode] = still
        top.children = new
        top.subdirs = len(new)
        return changes

    def upsert_container(self, c: Container, top: Node | None = None) -> Changes:
        """Refresh one container, adding it last in the listing if new (events)."""
        top = top or self.root
        changes = Changes()
        self._drop_aliases(top, changes)
        children = top.children if top.children is not None else {}
        name = escape_name(container_id(c))
        node = children.get(name) or self._unlisted.get(top.inode, {}).pop(name, None)
        if node is None or name not in children:
            # Last, not first as Docker lists it: a copy of the whole listing
            # per event would cost as much as a listing. Reading the
            # directory lists it again, in Docker's order.
            node = node or self._new_container(top, c)
            children[node.name] = node
            top.children = children
            top.subdirs = len(children)
        self._update_container(node, c, changes)
        self._index(top).put(node.raw or c)
        return changes

    def unlist_container(self, c: Container, top: Node | None = None) -> Changes:
        """Keep one container reachable by lookups but out of the listing (a
        stopped one without -a), adding it if new (a lookup found it)."""
        top = top or self.root
        changes = Changes()
        self._drop_aliases(top, changes)
        name = escape_name(container_id(c))
        unlisted = self._unlisted.setdefault(top.inode, {})
        node = (top.children or {}).pop(name, None) or unlisted.get(name)
        if node is None:
            node = self._new_container(top, c)
        else:
            self._update_container(node, c, changes)
            top.subdirs = len(top.children or {})
        unlisted[node.name] = node
        self._index(top).put(node.raw or c)
        return changes

    def remove_container(self, cid: str, top: Node | None = None) -> Changes:
        top = top or self.root
        changes = Changes()
        self._drop_aliases(top, changes)
        children = top.children or {}
        name = escape_name(cid)
        node = children.pop(name, None) or self._unlisted.get(top.inode, {}).pop(name, None)
        if node is not None:
            self._index(top).drop(cid)
            self._drop(top, node, changes)
            top.subdirs = len(children)
        return changes

    # -- a container's own files (root/) ----------------------------------------------

    def set_listing(self, dirnode: Node, entries: Sequence[Entry]) -> Changes:
        """Make a directory under root/ hold exactly these entries, keeping the
        inodes of names whose type did not change."""
        changes = Changes()
        old = dirnode.children or {}
        new: dict[str, Node] = {}
        for entry in entries:
            new[entry.name] = self._fs_node(dirnode, entry, old.get(entry.name), changes)
        for name, child in old.items():
            if name not in new:
                self._drop(dirnode, child, changes)
        dirnode.children = new
        dirnode.subdirs = sum(1 for e in entries if e.is_dir)
        return changes

    def set_entry(self, dirnode: Node, entry: Entry) -> tuple[Node, Changes]:
        """One child of a directory under root/, as a lookup found it."""
        changes = Changes()
        children = dirnode.children if dirnode.children is not None else {}
        node = self._fs_node(dirnode, entry, children.get(entry.name), changes)
        children[entry.name] = node
        dirnode.children = children
        return node, changes

    def remove_entry(self, dirnode: Node, name: str) -> Changes:
        """A child of a directory under root/ that a lookup found gone."""
        changes = Changes()
        node = (dirnode.children or {}).pop(name, None)
        if node is not None:
            self._drop(dirnode, node, changes)
        return changes

    def move_entry(
        self, dirnode: Node, name: str, new_dir: Node, new_name: str, new_path: str
    ) -> Changes:
        """A rename under root/ that the container made: the node keeps its
        number under its new name, as the kernel keeps it (it moves its
        dentry and asks nothing), so a `chmod` or `open` of the new name that
        follows reaches a node the table holds. What the name replaced is
        dropped; the entries held below a moved directory take its new path.
        Nothing held (never looked up): only the replaced name goes."""
        changes = Changes()
        node = (dirnode.children or {}).get(name)
        if node is not None and node is (new_dir.children or {}).get(new_name):
            return changes  # a rename onto itself
        replaced = (new_dir.children or {}).pop(new_name, None)
        if replaced is not None:
            self._drop(new_dir, replaced, changes)
        if node is None or dirnode.children is None:
            return changes
        del dirnode.children[name]
        if node.entry is None:  # not a path of the container's: nothing to move
            self._drop(dirnode, node, changes)
            return changes
        if new_dir.children is None:
            new_dir.children = {}
        old_path = node.entry.path
        for n in (node, *(below for below, _ in _below(node))):
            if n.entry is not None:
                rest = n.entry.path[len(old_path) :]
                n.entry = replace(n.entry, path=new_path + rest)
        node.name, node.parent = new_name, new_dir
        new_dir.children[new_name] = node
        if node.is_dir:
            dirnode.subdirs -= 1
            new_dir.subdirs += 1
        return changes

    def _fs_node(self, dirnode: Node, entry: Entry, node: Node | None, changes: Changes) -> Node:
        kind = Kind.DIR if entry.is_dir else Kind.LINK if entry.is_link else Kind.FILE
        if node is not None and (
            node.entry is None or stat.S_IFMT(node.entry.mode) != stat.S_IFMT(entry.mode)
        ):
            self._drop(dirnode, node, changes)  # another file by that name now
            node = None
        if node is None:
            node = self._new_node(dirnode, entry.name, kind, 0)
        node.entry = entry
        # Whole seconds, as tar says; below the second a count of listings
        # that the FUSE layer may move on (kernel caching), kept here.
        node.mtime_ns = entry.mtime * NS + node.mtime_ns % NS
        node.data = entry.link
        return node

    # -- folding what the kernel forgot ---------------------------------------------

    def _fold(self, container: Node) -> None:
        """Let go of a built container directory's nodes, none of which the
        kernel holds, keeping their numbers for the rebuild. Not one whose
        root/ has entries, or exec/ a session: those come from the engine
        and the sessions, not the list, and keep their own numbers. The
        files a view adds to exec/ (its clone) go, and it adds them again."""
        if container.gone or not container.children:
            return
        below = list(_below(container))
        if any(n.lookups or _unfoldable(n) for n, _ in below):
            return
        below = [(n, p) for n, p in below if n.parent is None or n.parent.special is None]
        if all(n.inode == container.inode + 1 + i for i, (n, _) in enumerate(below)):
            self._folded_plain.add(container.inode)
        else:
            if len(self._paths) > SHARED_PATHS:
                self._paths.clear()
            paths = tuple(self._paths.setdefault(path, path) for _, path in below)
            self._folded[container.inode] = _Numbers(paths, array("Q", (n.inode for n, _ in below)))
        for listener in self.fold_listeners:
            listener(container)
        for node, _ in below:
            if node.is_dir:
                for listener in self.fold_listeners:
                    listener(node)
            for added in (node.children or {}).values() if node.special is not None else ():
                self._nodes.pop(added.inode, None)
                added.parent, added.gone = None, True
            del self._nodes[node.inode]
            # Nothing points at them now: freed at once, not by the cycle collector.
            node.children = node.parent = None
            node.gone = True
        container.children = None
        self.folds += 1
        if len(self._nodes) * 4 < self._nodes_peak:
            # A dict keeps the room of its largest size: after a forgotten
            # walk of 10,000 containers, ~10 MB for 10,000 entries.
            self._nodes = dict(self._nodes)
            self._nodes_peak = len(self._nodes)
            # Those made by the walk would keep its memory in use too.
            self._bytes.clear()

    def _renumber(self, container: Node, numbers: _Numbers | None) -> None:
        """Number a container's nodes, just built: as recorded when it was
        folded, or else in the order they were made, after its own number
        (the same order for the same list answer, so the same numbers)."""
        old = numbers.by_path() if numbers is not None else None
        for i, (node, path) in enumerate(_below(container)):
            if old is not None:
                number = old.get(path)
            else:
                number = container.inode + 1 + i if i < CONTAINER_BLOCK - 1 else None
            if number is not None and number != node.inode:
                del self._nodes[node.inode]
                node.inode = number
                self._nodes[number] = node

    def _live_block(self, live: Node) -> tuple[int, int] | None:
        """The numbers for the entries of a container's `.live/`, made only
        now, that a build of all of it would have given (`_renumber`): they
        follow `.live/` itself, the last of the container's nodes in a
        build's order, so no build has given them yet."""
        container = live.parent
        if not live.unlisted or container is None or container.raw is None:
            return None
        end = container.inode + CONTAINER_BLOCK
        return (live.inode + 1, end) if container.inode < live.inode < end else None

    def _unfold_plain(self, node: Node) -> None:
        """A folded container's answer is about to change, and with it perhaps
        the order its next build makes nodes in: record the numbers now."""
        self._folded_plain.discard(node.inode)
        assert node.raw is not None
        paths = tuple(_spec_paths(container_spec(node.raw)))
        first = node.inode + 1
        numbers = array("Q", range(first, first + min(len(paths), CONTAINER_BLOCK - 1)))
        self._folded[node.inode] = _Numbers(paths[: len(numbers)], numbers)

    # -- internals -------------------------------------------------------------------

    def _new_node(self, parent: Node, name: str, kind: Kind, mtime_ns: int) -> Node:
        block = self._block
        if block is not None and block[0] < block[1] and block[0] not in self._nodes:
            # A container's build: its nodes numbered in its block as made,
            # in the order _renumber gives, so none is numbered twice.
            number = block[0]
            self._block = (number + 1, block[1])
        else:
            number = self._next
            self._next += 1
            self._block = None
        node = (
            DirNode(number, name, mtime_ns, parent=parent)
            if kind is Kind.DIR
            else Node(number, name, kind, mtime_ns, parent=parent)
        )
        self._nodes[node.inode] = node
        self._nodes_peak = max(self._nodes_peak, len(self._nodes))
        return node

    def _new_container(self, top: Node, c: Container) -> Node:
        """A container directory, left unbuilt until something inside is asked for."""
        kept = self._kept(c)
        # Its own name, not the answer's: the answer's memory is then all freed.
        node = self._new_node(top, escape_name(container_id(kept)), Kind.DIR, 0)
        node.mtime_ns = created_seconds(kept) * NS
        node.raw = kept
        node.subdirs = len(SUBDIRS)
        self._next += CONTAINER_BLOCK - 1  # for its nodes (_renumber)
        return node

    def _update_container(self, node: Node, c: Container, changes: Changes) -> None:
        """New API answer for a listed container: rebuild now only if built.

        The kept answer stays when the new one says the same (most do, and a
        compare costs ~1.5 us, a tenth of the answer's parse), so a listing's
        answers are freed as soon as it is applied, not kept beside the last."""
        if node.raw == c:
            return
        if node.children is None:
            if node.inode in self._folded_plain:
                # Its next build may make its nodes in another order: record them.
                self._unfold_plain(node)
            node.raw = self._kept(c, node.raw)
        else:
            node.raw = self._kept(c, node.raw)
            self._reconcile(node, container_spec(c), changes)

    def _kept(self, c: Container, old: Container | None = None) -> Container:
        """A container's answer as kept: its strings and nested values one
        object with the other containers' that are the same (the image, the
        state, labels, networks: 2.8 KB an answer at 10,000 created
        containers, 1 KB kept), and copies of the others, not the parse's
        own: kept, a few of them in each of its pages would keep the whole
        parse's memory in use. What `old`, the answer kept until now, says
        the same of is kept as it was (a new Status, say, costs only itself)."""
        kept: dict[str, Any] = {}
        shared = self._values
        was = old if old is not None else {}
        for key, value in c.items():
            same = was.get(key, kept)
            if same is not kept and type(same) is type(value) and same == value:
                kept[key] = same
                continue
            if isinstance(value, str):
                like: object = value
            elif isinstance(value, dict | list):
                try:
                    like = orjson.dumps(value)
                except (orjson.JSONEncodeError, TypeError):  # a lone surrogate, say
                    like = None
            else:
                like = None
            if like is not None:
                found = shared.get(like) if key not in _UNIQUE_FIELDS else None
                if found is None:
                    found = _copy(value, like)
                    if key not in _UNIQUE_FIELDS:
                        if len(shared) > SHARED_PATHS:
                            shared.clear()
                        # A string is its own key: the copy, not the parse's
                        # (kept as a key, it would keep the parse's page).
                        shared[found if isinstance(value, str) else like] = found
                value = found
            elif isinstance(value, int) and not isinstance(value, bool):
                value = _copy(value, None)
            kept[key] = value
        return kept

    def _reconcile(
        self, dirnode: Node, spec: Spec | Tree, changes: Changes, *, whole: bool = False
    ) -> None:
        """Make dirnode's children match spec, keeping the inodes of kept names.

        A container's unlisted `.live/` is left to make until something in it
        is first asked for (`whole`: made now): a walk never enters it, and
        its entries were a fifth of a walked container's nodes."""
        old = dirnode.children or {}
        new: dict[str, Node] = {}
        subdirs = 0
        for name, value in spec.items():
            child = old.get(name)
            kind = (
                Kind.DIR
                if _makes_dir(value)
                else Kind.LINK
                if isinstance(value, Link)
                else Kind.FILE
            )
            if child is not None and child.kind is not kind:
                self._drop(dirnode, child, changes)
                child = None
            if child is None:
                child = self._new_node(dirnode, name, kind, dirnode.mtime_ns)
            if isinstance(value, Mapping):
                child.unlisted = isinstance(value, Unlisted)
                if (
                    child.unlisted
                    and dirnode.raw is not None
                    and child.children is None
                    and not whole
                ):
                    child.pending = value
                    child.subdirs = subdirs_of(value)
                else:
                    child.pending = None
                    self._reconcile(child, value, changes)
                subdirs += 1
            elif isinstance(value, Special):
                # root/ and exec/ keep their children: they come from the
                # engine and the sessions, not the list.
                child.special = value
                subdirs += kind is Kind.DIR
            elif isinstance(value, Link):
                target = value.target.encode()
                if child.data != target:
                    if child.lookups:
                        changes.changed.append(child.inode)
                    child.data = self._shared(target)
            elif child.data != value:
                if child.lookups:
                    changes.changed.append(child.inode)
                child.data = self._shared(value)
            new[name] = child
        for name, child in old.items():
            if name not in new:
                self._drop(dirnode, child, changes)
        if dirnode.lookups and list(new) != list(old):
            changes.changed.append(dirnode.inode)
        dirnode.children = new
        dirnode.subdirs = subdirs

    def _shared(self, data: bytes) -> bytes:
        """One object for equal contents: most containers' Image, State,
        Labels/..., links into `.live/` say the same as the others'."""
        if len(data) > SHARED_BYTES_MAX:
            return data
        if len(self._bytes) > SHARED_PATHS:
            self._bytes.clear()
        return self._bytes.setdefault(data, data)

    def _drop(self, parent: Node, node: Node, changes: Changes) -> None:
        """Take a subtree out of the tree; keep what the kernel still references."""
        if node.lookups:
            changes.removed.append((parent.inode, node.name, node.inode))
        stack = [node]
        while stack:
            n = stack.pop()
            if n.children:
                stack.extend(n.children.values())
                n.children = {}
            if n.raw is not None:
                self._held.pop(n.inode, None)
                self._folded_plain.discard(n.inode)
                self._folded.pop(n.inode, None)
            n.raw = n.pending = None
            n.gone = True
            if n.lookups == 0:
                self._let_go_of(n.inode)

    def _let_go_of(self, inode: int) -> None:
        if self._nodes.pop(inode, None) is not None:
            for listener in self.gone_listeners:
                listener(inode)


def _copy(value: Any, encoded: object) -> Any:
    """A new object equal to an answer's value (str, int, or a list or dict
    that orjson encoded as `encoded`)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    if isinstance(value, int):
        return int(str(value))
    if isinstance(encoded, bytes):
        return orjson.loads(encoded)
    return value


def _container_above(node: Node) -> Node | None:
    """The container directory a node is below, if any."""
    n = node.parent
    while n is not None:
        if n.raw is not None:
            return n
        n = n.parent
    return None


def _unfoldable(node: Node) -> bool:
    """A root/ with entries, or an exec/ with a session (a directory)."""
    if node.special is Special.ROOT:
        return bool(node.children)
    return node.special is Special.EXEC and any(c.is_dir for c in (node.children or {}).values())


def _below(container: Node) -> Iterator[tuple[Node, str]]:
    """The nodes below a container directory and their paths, in the order a
    build makes them (each directory, then what is in it)."""
    stack = [(node, name) for name, node in reversed((container.children or {}).items())]
    while stack:
        node, path = stack.pop()
        yield node, path
        stack.extend(
            (child, f"{path}/{name}") for name, child in reversed((node.children or {}).items())
        )


def _spec_paths(spec: Spec, prefix: str = "") -> Iterator[str]:
    """The paths a build of `spec` makes, in the order it makes them (as _below)."""
    for name, value in spec.items():
        yield prefix + name
        if isinstance(value, Mapping):
            yield from _spec_paths(value, f"{prefix}{name}/")


def _makes_dir(value: object) -> bool:
    """Whether a spec's entry is a directory: a mapping, or root/ or exec/."""
    return isinstance(value, Mapping) or value in (Special.ROOT, Special.EXEC)


def subdirs_of(spec: Spec | Tree) -> int:
    """The directories a spec holds, as _reconcile counts them (the link count)."""
    return sum(1 for v in spec.values() if _makes_dir(v))


def made(spec: Tree | Deferred) -> Tree:
    return spec.make() if isinstance(spec, Deferred) else spec


def owner_dir(node: Node) -> Node | None:
    """The directory an entry belongs to: its parent, or past an unlisted
    one (a container's `.live/logs` belongs to the container)."""
    parent = node.parent
    if parent is not None and parent.unlisted:
        parent = parent.parent
    return parent
