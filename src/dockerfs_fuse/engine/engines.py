"""Every engine of one mount, each at its directory in the inode table.

One engine: its view is the root. Several: the root holds one directory per
engine, each the one-engine tree. The view (VIEWS) says what that tree is:
its containers (the default); its cluster (services/, nodes/, tasks/), as
--swarm; or the whole engine (containers/, images/, volumes/, networks/,
projects/, and swarm/ holding the cluster view).
This is what the adapter asks which engine owns a node, and how reading a
directory reaches the engine behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import trio

from dockerfs_fuse.docker.create import Creator
from dockerfs_fuse.docker.helpers import HelperApi
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.engine.channel import Channels
from dockerfs_fuse.engine.clone import CLONE_KINDS, Cloner, Clones
from dockerfs_fuse.engine.containers import EngineCache, Source
from dockerfs_fuse.engine.events import EventStreams, top_entries
from dockerfs_fuse.engine.exits import ExitWaits
from dockerfs_fuse.engine.helper_roots import HelperRoots
from dockerfs_fuse.engine.helpers import HELPER_LABEL, Helpers
from dockerfs_fuse.engine.image_roots import ImageRoots
from dockerfs_fuse.engine.logs import LogSpools
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.engine.swarm import SwarmCache
from dockerfs_fuse.engine.volume_data import VolumeData
from dockerfs_fuse.model.inodes import Changes, InodeTable, Node, owner_dir

# What each engine's directory shows (--view); the first is the default.
VIEWS = ("containers", "engine", "swarm")


class Engines:
    """The engines' caches by the inode of their directory, over one inode table.

    `on_changes` hears of every change to the table the caches make (the
    adapter pushes them to the kernel); it must never block.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        on_changes: Callable[[Changes], None],
        *,
        show_all: bool = False,
        kernel_cache: bool = False,
        view: str = VIEWS[0],
    ) -> None:
        if not sources:
            raise ValueError("no engine")
        if view not in VIEWS:
            raise ValueError(f"no view {view!r}")
        self.show_all = show_all
        self.kernel_cache = kernel_cache
        self.mounted_ns = time.time_ns()
        self.table = InodeTable(root_mtime_ns=self.mounted_ns)
        self.several = len(sources) > 1
        self.caches: dict[int, EngineCache] = {}
        # --swarm: each engine's cluster view, by its top directory's inode and
        # by those of its services/, nodes/ and tasks/.
        self.swarms: dict[int, SwarmCache] = {}
        self.swarm_lists: dict[int, SwarmCache] = {}
        # --view=engine: each engine's images/, volumes/, networks/ and
        # projects/, by the inodes of those directories.
        self.object_lists: dict[int, ObjectsCache] = {}
        self.object_tops: list[ObjectsCache] = []
        self.exit_waits = ExitWaits()
        # --view=engine: the clone file of each engine's containers/, images/,
        # volumes/ and networks/.
        self.clones = Clones(self.table)
        # --view=engine: each engine's `events` streams, by its top directory's inode.
        self.event_streams: dict[int, EventStreams] = {}
        # --view=engine: each engine's helper containers, and its images' root/
        # and volumes' data/ by the inode of its images/ and volumes/.
        self.helpers: list[Helpers] = []
        self.helper_roots: dict[int, HelperRoots] = {}
        # The running containers' long-lived shells, for small writes (engine/writes.py).
        self.channels = Channels()
        for name, source in sources.items():
            top = self.table.add_dir(name) if self.several else self.table.root
            objects: ObjectsCache | None = None
            if view == "swarm":
                assert isinstance(source, DockerSource)
                cluster = SwarmCache(name, source, self.table, top, on_changes)
                self.swarms[top.inode] = cluster
                self.swarm_lists.update(dict.fromkeys(cluster.kind_of, cluster))
                continue
            if view == "engine":
                assert isinstance(source, DockerSource)
                engine_top, top = top, self.table.add_dir("containers", parent=top)
                objects = ObjectsCache(name, source, self.table, engine_top, on_changes)
                self.object_lists.update(dict.fromkeys(objects.kind_of, objects))
                self.object_tops.append(objects)
                swarm_top = self.table.add_dir("swarm", parent=engine_top)
                cluster = SwarmCache(name, source, self.table, swarm_top, on_changes, optional=True)
                self.swarms[swarm_top.inode] = cluster
                self.swarm_lists.update(dict.fromkeys(cluster.kind_of, cluster))
                self.table.add_entries(engine_top, top_entries())
                self.event_streams[engine_top.inode] = EventStreams(source.stream_events)
            cache = self.caches[top.inode] = EngineCache(
                name,
                source,
                self.table,
                top,
                on_changes,
                show_all=show_all,
                kernel_cache=kernel_cache,
            )
            cache.removal_listeners.append(self.channels.gone)
            cache.stop_listeners.append(self.channels.stopped)
            cache.start_listeners.append(self.channels.started)
            if objects is not None:
                assert isinstance(source, DockerSource)
                cloner = Cloner(name, Creator(source), cache.refresh_container, objects.refresh)
                dirs = {**objects.dirs, "containers": top}
                self.clones.add(cloner, {kind: dirs[kind] for kind in CLONE_KINDS})
                helpers = Helpers(HelperApi(source, HELPER_LABEL), on_removed=cache.files.forget)
                self.helpers.append(helpers)
                cache.removal_listeners.append(helpers.gone)
                images = ImageRoots(objects, cache, helpers)
                self.helper_roots[objects.dirs["images"].inode] = images
                volumes = VolumeData(objects, cache, helpers)
                self.helper_roots[objects.dirs["volumes"].inode] = volumes

    def is_helper(self, cid: str) -> bool:
        """Whether `cid` is a helper container of ours (an image's root/, a volume's data/)."""
        return any(helpers.made(cid) for helpers in self.helpers)

    def cache_of(self, node: Node) -> EngineCache | None:
        """The engine a node belongs to (None for the root of several engines)."""
        for n in _up_from(node):
            cache = self.caches.get(n.inode)
            if cache is not None:
                return cache
        return None

    def swarm_of(self, node: Node) -> SwarmCache | None:
        for n in _up_from(node):
            view = self.swarms.get(n.inode)
            if view is not None:
                return view
        return None

    def container_of(self, node: Node) -> tuple[EngineCache, str] | None:
        """The engine and container ID of a node inside a container directory
        (None outside one, or once the container is gone)."""
        while node.parent is not None and node.parent.inode not in self.caches:
            node = node.parent
        if node.parent is None or node.gone:
            return None
        return self.caches[node.parent.inode], node.name

    def polled_log_size(self, node: Node) -> int | None:
        """The size of a `logs` node (None if it has no log). `tail -f` follows
        by polling it: once the log so far is in, asking starts following."""
        owner = owner_dir(node)
        spools = self._log_spools(node)
        if owner is None or spools is None:
            return None
        return spools.polled_size(owner.name)

    def _log_spools(self, node: Node) -> LogSpools | None:
        cache = self.cache_of(node)
        if cache is not None:
            return cache.logs
        view = self.swarm_of(node)
        return view.logs if view is not None else None

    def is_top(self, inode: int) -> bool:
        """The root, or an engine's directory: listings that ask an engine."""
        return inode == self.table.root.inode or inode in self.caches

    async def refresh_listing(self, inode: int) -> bool:
        """The contract: reading an engine's containers (the root with one
        engine and the default view) refreshes them, and reading a Swarm's
        services/, nodes/ or tasks/, or the engine view's images/, volumes/,
        networks/ or projects/, re-reads that list; reading an object's
        Containers/ or UsedBy/ lists every container. The root of several
        engines lists them and asks none. Whether an engine was asked."""
        cache = self.caches.get(inode)
        if cache is not None:
            await cache.refresh()
            return True
        lister = self.swarm_lists.get(inode) or self.object_lists.get(inode)
        if lister is None:
            links = self._links_of(inode)
            if links is None:
                return False
            await links.refresh_links()
            return True
        await lister.refresh_dir(inode)
        return True

    def lists_on_read(self, inode: int) -> bool:
        """Whether reading this directory asks its engine (refresh_listing)."""
        return (
            inode in self.caches
            or inode in self.swarm_lists
            or inode in self.object_lists
            or self._links_of(inode) is not None
        )

    def _links_of(self, inode: int) -> ObjectsCache | None:
        """The engine view whose Containers/ or UsedBy/ directory this is."""
        return next((o for o in self.object_tops if o.lists_links(inode)), None)

    def helper_roots_of(self, node: Node) -> HelperRoots | None:
        """The images' root/ or volumes' data/ directories of the engine whose
        images/ or volumes/ a node is under."""
        for n in _up_from(node):
            roots = self.helper_roots.get(n.inode)
            if roots is not None:
                return roots
        return None

    def events_of(self, node: Node) -> EventStreams | None:
        """The event streams of the engine whose `events` a node is."""
        owner = owner_dir(node)
        return self.event_streams.get(owner.inode) if owner is not None else None

    def objects_of(self, node: Node) -> ObjectsCache | None:
        """The engine view's cache of the image, volume, network or project a node is in."""
        for n in _up_from(node):
            if n.parent is not None and n.parent.inode in self.object_lists:
                return self.object_lists[n.parent.inode]
        return None

    async def run_events(self) -> None:
        """Every engine's event stream (a task in the main nursery)."""
        async with trio.open_nursery() as nursery:
            for cache in self.caches.values():
                nursery.start_soon(cache.run_events)
            for view in self.swarms.values():
                nursery.start_soon(view.run_events)
            for helpers in self.helpers:
                nursery.start_soon(helpers.run)
            nursery.start_soon(self.channels.run)

    def stats(self) -> dict[str, Any]:
        """Each engine's request counters and the like, by engine name."""
        engines = {cache.name: cache.stats() for cache in self.caches.values()}
        # An engine view's swarm/ counts in its engine's own entry.
        engines.update(
            (view.name, view.stats()) for view in self.swarms.values() if not view.optional
        )
        return engines

    def log_spool_count(self) -> int:
        return sum(len(cache.logs) for cache in self.caches.values())


def _up_from(node: Node) -> Iterator[Node]:
    n: Node | None = node
    while n is not None:
        yield n
        n = n.parent
