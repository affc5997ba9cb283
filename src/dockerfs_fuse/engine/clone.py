"""The engine view's `clone` files: a write makes a container, volume, network
or image; a read on the same descriptor says what was made, or why not.

As Plan 9's ip(3) `clone` makes a connection, each of `containers/`,
`images/`, `volumes/` and `networks/` holds `clone -> .live/clone`; the line
written there (model/clone.py, model/runline.py) is checked before Docker
hears of it, then sent (docker/create.py). What the writer reads back
(`Replies`): a pull's progress lines as they come, then the new object's
name, or the reason for a refusal. Then that one object is read into the
tree (one filtered request for a container, one list of its kind for the
others), so `ls` and `cat` show it at once.

Policy only: the creator and the two refreshes are given, so that this is
unit-tested under trio with fakes (tests/test_clone_engine.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import trio

from dockerfs_fuse.docker.errors import DockerProblem
from dockerfs_fuse.model.clone import (
    Pull,
    parse_image,
    parse_network,
    parse_volume,
    progress_line,
)
from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.model.inodes import InodeTable, Kind, Node
from dockerfs_fuse.model.runline import parse_container

log = logging.getLogger(__name__)

# The directories that hold a clone file, and what each makes.
CLONE_KINDS = ("containers", "images", "volumes", "networks")
CLONE = "clone"
# What an open clone holds for its reader: a pull's progress beyond this is
# dropped, oldest first (a writer nobody reads after must not grow memory).
MAX_REPLY_BYTES = 64 << 10


class Creator(Protocol):
    """What the clone files need of an engine (docker/create.py's Creator; a fake in tests)."""

    async def create_container(self, name: str, body: bytes) -> str: ...
    async def start_container(self, cid: str) -> None: ...
    async def remove_container(self, cid: str) -> None: ...
    async def create_volume(self, body: dict[str, Any]) -> str: ...
    async def create_network(self, body: dict[str, Any]) -> str: ...
    async def tag_image(self, ref: str, repo: str, tag: str) -> None: ...
    async def image_id(self, ref: str) -> str: ...
    async def pull(
        self, image: str, tag: str, progress: Callable[[Mapping[str, Any]], None]
    ) -> None: ...


class Replies:
    """What reads of one open clone return: the last write's progress lines,
    then its answer (a name and a newline, or why it was refused).

    Read by position from where the first read after the write starts, so
    that a reader that reads ahead and seeks back (bash's `read`) loses
    nothing, whatever offset the descriptor had. Bounded: past `limit` the
    oldest whole lines go, and a reader that far behind skips to the oldest
    kept. A read past what is there, while the write is in flight, waits for
    its next line; once it is done, it is the end (EOF)."""

    def __init__(self, limit: int = MAX_REPLY_BYTES) -> None:
        self._limit = limit
        self._data = bytearray()
        self._start = 0  # the position of _data[0]: what was dropped before it
        self._pending = False
        self._first_read: int | None = None
        self._changed = trio.Event()

    def begin(self) -> None:
        """A new write: what the last one said is no longer read."""
        self._data.clear()
        self._start = 0
        self._pending = True
        self._first_read = None

    def line(self, text: str) -> None:
        self._data += (text + "\n").encode("utf-8", "backslashreplace")
        while len(self._data) > self._limit:
            cut = self._data.find(b"\n") + 1
            if cut <= 0 or cut >= len(self._data):
                break  # the last line stays, however long
            del self._data[:cut]
            self._start += cut
        self._changed.set()

    def end(self, text: str) -> None:
        """The write's answer: its last line."""
        self.line(" ".join(text.split()))
        self._pending = False
        self._changed.set()

    async def read(self, off: int, size: int) -> bytes:
        """Up to `size` bytes at `off`, counted from the first read's offset."""
        if self._first_read is None:
            self._first_read = off
        pos = max(0, off - self._first_read)
        while pos >= self._start + len(self._data) and self._pending:
            self._changed = trio.Event()
            await self._changed.wait()
        if pos < self._start:
            # Fallen behind what is kept: this read takes the oldest line kept,
            # and the reader's next offset follows on from it.
            self._first_read = off - self._start
            pos = self._start
        at = pos - self._start
        return bytes(self._data[at : at + size])


class Cloner:
    """One engine's clone files: a write's request, made, and the object read into the tree."""

    def __init__(
        self,
        name: str,
        creator: Creator,
        refresh_container: Callable[[str], Awaitable[None]],
        refresh_kind: Callable[[str], Awaitable[None]],
    ) -> None:
        self.name = name
        self.creator = creator
        self._refresh_container = refresh_container
        self._refresh_kind = refresh_kind

    async def write(self, kind: str, data: bytes, replies: Replies) -> None:
        """Make what `data` asks in `kind`; its name is the last line of `replies`.
        A refusal raises (BadLine or a DockerProblem) and the caller says why."""
        replies.begin()
        if kind == "containers":
            made = await self._container(data)
        elif kind == "volumes":
            made = await self.creator.create_volume(parse_volume(data))
            await self._show(kind, made)
        elif kind == "networks":
            made = await self.creator.create_network(parse_network(data))
            await self._show(kind, made)
        else:
            made = await self._image(data, replies)
        log.info("%s: clone made %s %s", self.name, kind[:-1], made)
        replies.end(made)

    async def _container(self, data: bytes) -> str:
        request = parse_container(data)
        body = request.raw if request.raw is not None else json.dumps(request.body).encode()
        cid = await self.creator.create_container(request.name, body)
        if request.start:
            try:
                await self.creator.start_container(cid)
            except DockerProblem:
                # Refused whole: the container that could not start goes too.
                with trio.CancelScope(shield=True):
                    await self._remove(cid)
                raise
        try:
            await self._refresh_container(cid)
        except DockerProblem as exc:  # made all the same: the next event shows it
            log.warning("%s: reading new container %s: %s", self.name, cid[:12], exc)
        return cid

    async def _remove(self, cid: str) -> None:
        try:
            await self.creator.remove_container(cid)
        except DockerProblem as exc:
            log.warning("%s: removing %s, which did not start: %s", self.name, cid[:12], exc)

    async def _image(self, data: bytes, replies: Replies) -> str:
        request = parse_image(data)
        if isinstance(request, Pull):

            def progress(message: Mapping[str, Any]) -> None:
                line = progress_line(message)
                if line:
                    replies.line(line)

            await self.creator.pull(request.image, request.tag, progress)
            ref = request.ref if "@" in request.ref else f"{request.image}:{request.tag}"
        else:
            await self.creator.tag_image(request.source, request.repo, request.tag)
            ref = f"{request.repo}:{request.tag}"
        made = (await self.creator.image_id(ref)).removeprefix("sha256:")
        await self._show("images", made)
        return made

    async def _show(self, kind: str, made: str) -> None:
        try:
            await self._refresh_kind(kind)
        except DockerProblem as exc:
            log.warning("%s: listing %s after making %s: %s", self.name, kind, made, exc)


class Clones:
    """Every engine's clone files in one inode table, by the inode of each `.live/clone`."""

    def __init__(self, table: InodeTable) -> None:
        self.table = table
        self._files: dict[int, tuple[Cloner, str]] = {}

    def add(self, cloner: Cloner, dirs: Mapping[str, Node]) -> None:
        """`clone -> .live/clone` in each of an engine's kind directories."""
        for kind, parent in dirs.items():
            live = self.table.add_fixed(parent, LIVE, Kind.DIR, unlisted=True)
            node = self.table.add_fixed(live, CLONE, Kind.FILE)
            self.table.add_fixed(parent, CLONE, Kind.LINK, data=f"{LIVE}/{CLONE}".encode())
            self._files[node.inode] = (cloner, kind)

    def of(self, inode: int) -> tuple[Cloner, str] | None:
        """The engine and kind a clone file makes for (None: not a clone file)."""
        return self._files.get(inode)
