"""One engine's container cache: what keeps its part of the tree fresh.

Policy only, no FUSE: each engine of a mount has one `EngineCache`, which
owns that engine's subtree of the inode table (its "top": the root in a
one-engine mount, else the engine's directory; `containers/` below that
with --view=engine), its `DockerSource`, its
event stream, its log spools and the numbering that lets a listing and a
newer event meet in the right order. What changed is handed to `on_changes`
(the FUSE adapter pushes it to the kernel), so the whole freshness engine is
unit-tested under trio with a fake source (tests/test_cache.py).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from dockerfs_fuse.docker.errors import ApiError, Conflict, DockerProblem, NotFound
from dockerfs_fuse.docker.source import LISTED_STATES, Event
from dockerfs_fuse.engine.archive import ArchiveWriter
from dockerfs_fuse.engine.files import ContainerFiles
from dockerfs_fuse.engine.logs import LogSpools, LogWriter
from dockerfs_fuse.engine.refresh import (
    EventStream,
    MissLimiter,
    Refresher,
    Removals,
    follow_events,
)
from dockerfs_fuse.engine.spool import Cancellable
from dockerfs_fuse.model.containers import (
    Container,
    container_id,
    could_name_a_container,
    escape_name,
    resolve_name,
)
from dockerfs_fuse.model.ctl import Command
from dockerfs_fuse.model.files import NotThere
from dockerfs_fuse.model.inodes import Changes, InodeTable, Node
from dockerfs_fuse.model.render import render_stats, render_top

log = logging.getLogger(__name__)

# With kernel caching (kernel_cache.py) listings are cached too, so entries
# must outlive a walk: every change is invalidated, this only bounds a lost one.
KERNEL_CACHE_TIMEOUT = 3600.0
# For tests only, ATTR_TIMEOUT in seconds (read once, at start-up): a test that
# shows a change was pushed to the kernel sets it long, so that "seen before
# the kernel would have asked again" leaves a loaded machine plenty of time.
ATTR_TIMEOUT_ENV = "DOCKERFS_ATTR_TIMEOUT"
DEFAULT_ATTR_TIMEOUT = 10.0


def attr_timeout_from(environ: Mapping[str, str]) -> float:
    """ATTR_TIMEOUT_ENV's seconds, (0, KERNEL_CACHE_TIMEOUT]; unset or out of
    bounds is the default (the latter with a warning)."""
    value = environ.get(ATTR_TIMEOUT_ENV, "").strip()
    if not value:
        return DEFAULT_ATTR_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if 0 < seconds <= KERNEL_CACHE_TIMEOUT:
        return seconds
    log.warning(
        "%s=%r is not seconds in (0, %g]; using %g",
        ATTR_TIMEOUT_ENV,
        value,
        KERNEL_CACHE_TIMEOUT,
        DEFAULT_ATTR_TIMEOUT,
    )
    return DEFAULT_ATTR_TIMEOUT


# How long the kernel may trust what we told it. Removals and size changes
# are pushed to the kernel as invalidations, so these bound staleness only
# for changes nobody has asked us about yet.
ATTR_TIMEOUT = attr_timeout_from(os.environ)  # for entries and attributes alike
# While an engine's event stream is down nothing tells us of changes: trust less.
FALLBACK_TIMEOUT = 1.0
# Retries of a dropped event stream: 0.5 s doubling to this. Only an engine
# that does not answer its list makes the wait grow (a refused connect is
# cheap), and until the reconnect lists it again the tree shows containers as
# they were before the engine went away: keep that short.
RECONNECT_MAX = 1.0
# Containers re-read by one filtered request (their IDs go in its URL).
IDS_PER_REQUEST = 100
# When to re-read a container after its events (seconds after, cumulative).
EVENT_REREAD_DELAYS = (0.05, 0.4)
# Containers whose logs may be open at once, per engine: each holds one of
# aiohttp's 100 connections to the engine while its log loads or grows
# (ENFILE beyond).
MAX_LOG_SPOOLS = 64
# Event actions that change what a container's directory shows. Podman says
# `remove` for Docker's `destroy`, and `cleanup` once its container is gone
# from the process table (after `died` or `die`).
_EVENT_ACTIONS = frozenset(
    [
        "create",
        "start",
        "restart",
        "die",
        "died",
        "cleanup",
        "stop",
        "kill",
        "pause",
        "unpause",
        "rename",
        "destroy",
        "remove",
        "oom",
        "update",
    ]
)
_REMOVED_ACTIONS = frozenset(["destroy", "remove"])
_STOPPED_ACTIONS = frozenset(["die", "died", "pause"])
_STARTED_ACTIONS = frozenset(["start", "unpause"])


class Source(Protocol):
    """What a cache needs of an engine (DockerSource; a fake in unit tests)."""

    @property
    def requests(self) -> Mapping[str, int]: ...

    async def list_containers(self, all: bool = False) -> list[Container]: ...
    async def list_one(self, cid: str, all: bool = False) -> Container | None: ...
    async def list_ids(self, cids: Sequence[str], all: bool = False) -> list[Container]: ...
    async def find(self, name: str, all: bool = False) -> list[Container]: ...
    async def inspect(self, cid: str) -> dict[str, Any]: ...
    async def control(self, cid: str, command: Command) -> None: ...
    async def identify(self) -> None: ...
    def events(self) -> EventStream[Event]: ...
    def stream_logs(self, cid: str, out: LogWriter, follow: bool) -> Cancellable: ...
    def stream_archive(self, cid: str, path: str, out: ArchiveWriter) -> Cancellable: ...
    async def top(self, cid: str) -> dict[str, Any]: ...
    async def stats(self, cid: str) -> dict[str, Any]: ...
    def wait(self, cid: str) -> concurrent.futures.Future[int]: ...


@dataclass(frozen=True, slots=True)
class _Listing:
    """A root listing: the containers it lists, and fresh answers for those
    the kernel holds that it leaves out (by ID; None for one the engine no
    longer has)."""

    listed: list[Container]
    unlisted: Mapping[str, Container | None] = field(default_factory=dict)
    asked: int = 0  # its number among the reads of container state (EngineCache._ask)


class EngineCache:
    """The containers of one engine, kept fresh under `top` in `table`."""

    def __init__(
        self,
        name: str,
        source: Source,
        table: InodeTable,
        top: Node,
        on_changes: Callable[[Changes], None],
        *,
        show_all: bool = False,
        kernel_cache: bool = False,
    ) -> None:
        self.name = name
        self.source = source
        self.table = table
        self.top = top
        self.show_all = show_all
        self.kernel_cache = kernel_cache
        self._on_changes = on_changes
        self.attr_timeout = ATTR_TIMEOUT
        self.keep_pages = False  # while the engine's event stream is up
        self.events_up = False
        self._misses = MissLimiter[str]()
        # Told each container the engine removes (its ID): helpers.py's records.
        self.removal_listeners: list[Callable[[str], None]] = []
        # Told each container that stops or is paused (its ID): writes' shell channels.
        self.stop_listeners: list[Callable[[str], None]] = []
        # Told each container that starts or is unpaused (its ID): the same channels.
        self.start_listeners: list[Callable[[str], None]] = []
        self._scheduled: set[str] = set()
        # Events numbered as they arrive, to catch a list answer that was
        # fetched before an event but applied after it: each refresh() in
        # flight notes the number it started at, and each container's latest
        # event is kept while some refresh() in flight started before it
        # (so only the events during the oldest listing in flight are kept).
        self._event_seq = 0
        self._listings_from: list[int] = []
        self._last_event: dict[str, int] = {}
        # Reads of container state numbered as they are sent, and the number of
        # the newest listing applied: a single container's answer that was sent
        # before that listing is older than what the listing said of it.
        self._asks = 0
        self._listed_as_of = 0
        # Removal events by number, so that an answer in flight across one is
        # dropped rather than bringing the container back.
        self._removals = Removals[str]()
        self._reread_send, self._reread_recv = trio.open_memory_channel[str](math.inf)
        self.logs = LogSpools(source.stream_logs, self.may_be_running, MAX_LOG_SPOOLS)
        # Each container's own files (root/): snapshots of the archive endpoint.
        self.files = ContainerFiles(
            source.stream_archive,
            is_gone=lambda exc: isinstance(exc, NotFound | NotThere),
            is_refused=lambda exc: isinstance(exc, ApiError),
        )
        self._refresher = Refresher(self._fetch)

    # -- listings ---------------------------------------------------------------

    def _ask(self) -> int:
        self._asks += 1
        return self._asks

    async def _fetch(self) -> _Listing:
        asked = self._ask()
        listed = await self.source.list_containers(all=self.show_all)
        if self.show_all:
            return _Listing(listed, asked=asked)
        # Without -a, a container the kernel holds and the listing leaves out
        # has stopped or gone: ask which, in this listing's time, so that what
        # the kernel reaches under it once `ls` returns is what it is now.
        # While events were down (a reconnect), ask about every unlisted one.
        ids = {container_id(c) for c in listed}
        held = self.table.held(self.top)
        if not self.events_up:
            held += [container_id(n.raw) for n in self.table.unlisted(self.top).values() if n.raw]
        ids_asked = [cid for cid in held if cid and cid not in ids]
        return _Listing(listed, await self._answers(ids_asked), asked=asked)

    async def _answers(self, cids: list[str]) -> dict[str, Container | None]:
        """Each container's list entry now, by ID (None: gone); {} if the engine
        cannot say (those the listing dropped go, as removed ones do)."""
        if not cids:
            return {}
        answers: dict[str, Container | None] = dict.fromkeys(cids)
        try:
            for i in range(0, len(cids), IDS_PER_REQUEST):
                for c in await self.source.list_ids(cids[i : i + IDS_PER_REQUEST], all=True):
                    if container_id(c) in answers:
                        answers[container_id(c)] = c
        except DockerProblem as exc:
            log.warning(
                "%s: re-reading %d containers a listing left out: %s", self.name, len(cids), exc
            )
            return {}
        return answers

    async def refresh(self) -> None:
        """Fetch the container list and make the subtree match it."""
        seq = self._event_seq
        self._listings_from.append(seq)
        try:
            listing = await self._refresher.get()
            if listing.asked < self._listed_as_of:
                return  # a newer listing was applied while this one was shared out
            self._listed_as_of = listing.asked
            self._apply(self.table.set_containers(listing.listed, self.top, listing.unlisted))
            # An event that arrived while the list was in flight may be newer
            # than the list (a `docker rm` the list still shows): read those again.
            if self._event_seq > seq:
                for cid, event_seq in self._last_event.items():
                    if event_seq > seq:
                        self._schedule_reread(cid)
        finally:
            self._listings_from.remove(seq)
            self._forget_events()

    def _forget_events(self) -> None:
        """Drop the events no refresh() in flight started before: none of
        them can be newer than a listing still to land."""
        if not self._listings_from:
            self._last_event.clear()
        elif self._last_event:
            oldest = min(self._listings_from)
            self._last_event = {c: s for c, s in self._last_event.items() if s > oldest}

    async def refresh_container(self, cid: str) -> None:
        """Re-read one container (after a ctl command or an event).

        Without -a, a stopped one leaves the listing but stays reachable
        while the kernel holds it (a ctl of `web` holds it), so that
        `echo start > web/ctl` after `stop` finds it.
        """
        seq, asked = self._event_seq, self._ask()
        self._removals.read_sent(seq)
        try:
            c = await self.source.list_one(cid, all=True)
            if self._listed_as_of > asked or self._removals.after(cid, seq):
                # A listing sent after this read, or a removal event that came in
                # while it was in flight, is newer than this answer.
                return
        finally:
            self._removals.read_done(seq)
        if c is None:
            self._apply(self.table.remove_container(cid, self.top))
        elif self.show_all or c.get("State") in LISTED_STATES:
            self._apply(self.table.upsert_container(c, self.top))
        else:
            node = self.table.lookup(self.top, escape_name(cid))
            if node is not None and node.lookups:
                self._apply(self.table.unlist_container(c, self.top))
            elif node is not None:
                self._apply(self.table.remove_container(cid, self.top))

    def _apply(self, changes: Changes) -> None:
        if changes:
            self._on_changes(changes)

    # -- what a container shows that its list entry does not ------------------------

    async def inspect(self, cid: str) -> dict[str, Any]:
        return await self.source.inspect(cid)

    async def top_text(self, cid: str) -> bytes:
        """A container's processes as its `top` file shows them (none when not running)."""
        try:
            return render_top(await self.source.top(cid))
        except Conflict:
            return b""

    async def stats_text(self, cid: str) -> bytes:
        """One sample as its `stats` file shows it (none when not running)."""
        try:
            return render_stats(await self.source.stats(cid))
        except Conflict:
            return b""

    async def control(self, cid: str, command: Command) -> None:
        """Run a ctl command, then show its effect without waiting for the event."""
        await self.source.control(cid, command)
        try:
            await self.refresh_container(cid)
        except DockerProblem as exc:  # the command itself succeeded
            log.warning("%s: after ctl %s: %s", self.name, command.action, exc)

    def may_be_running(self, cid: str) -> bool:
        """Whether following the log may bring more (unknown counts as yes)."""
        node = self.table.lookup(self.top, escape_name(cid))
        state = (node.raw or {}).get("State") if node is not None else None
        return state not in ("created", "exited", "dead", "removing", "stopped")

    # -- lookups of names nobody listed ----------------------------------------------

    async def find(self, name: str) -> Node | None:
        """A name in the top directory: a container (listed or not), or an alias to one."""
        node = self.table.lookup(self.top, name)
        if node is not None:
            return node
        # Without -a the table holds some containers only, and a prefix
        # unique among them may be shared with another: the engine would
        # refuse it, so only its answer (below) may resolve a prefix.
        node = self.table.alias(name, by_prefix=self.show_all, top=self.top)
        if node is not None or not could_name_a_container(name):
            return node
        # A container started since the last listing or event, or a prefix:
        # ask the engine with filtered requests over all containers (no full
        # listing). The same missing name asks at most once per interval, so
        # a probe loop (shells, editors) cannot become a request loop; if
        # the engine cannot answer, a miss is just a miss.
        if not self._misses.may_ask(name):
            return None
        try:
            node = await self._ask_engine(name)
        except DockerProblem as exc:
            log.debug("%s: lookup of %s: %s", self.name, name, exc)
            return None
        if node is not None:
            self._misses.found(name)
        return node

    async def _ask_engine(self, name: str) -> Node | None:
        """Resolve a name as the engine would, against all containers; None if
        unknown or ambiguous. One the mount does not list (a stopped one,
        without -a) is reachable all the same, unlisted."""
        found = await self.source.find(name, all=True)
        cid = resolve_name(name, found)
        if not cid:
            return None
        c = _entry(found, cid)
        if self.show_all or c.get("State") in LISTED_STATES:
            self._apply(self.table.upsert_container(c, self.top))
        else:
            self._apply(self.table.unlist_container(c, self.top))
        return self.table.lookup(self.top, name) or self.table.link(name, cid, self.top)

    # -- the event stream ---------------------------------------------------------------

    async def run_events(self) -> None:
        """Keep the subtree fresh between listings (a task in the main nursery).

        On each container event, re-read that one container and push the
        invalidations, so `cat <id>/State` follows the engine without a
        listing. When the stream drops: log once, shorten the kernel's
        attribute timeouts, and reconnect with backoff; on reconnect, list
        everything once to catch what was missed (what changed while the
        engine was down sent no event we could see).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.run_rereads, nursery)
            nursery.start_soon(self.files.run_sweeper)
            meanwhile = ", caching less meanwhile"
            await follow_events(
                self, "event stream", RECONNECT_MAX, while_down=meanwhile, logger=log
            )

    def open_events(self) -> EventStream[Event]:
        return self.source.events()

    async def resync(self) -> None:
        await self.source.identify()
        await self.refresh()

    def set_events_up(self, up: bool) -> None:
        """Trust the kernel's caches while events tell of changes; less while not."""
        self.events_up = up
        if up:
            self.attr_timeout = KERNEL_CACHE_TIMEOUT if self.kernel_cache else ATTR_TIMEOUT
            self.keep_pages = self.kernel_cache
        else:
            self.attr_timeout = FALLBACK_TIMEOUT
            self.keep_pages = False

    def on_event(self, event: Event) -> None:
        action = str(event.get("Action") or event.get("status") or "").split(":")[0]
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        if not cid or not (action in _EVENT_ACTIONS or action.startswith("health_status")):
            return
        log.debug("%s: event %s %s", self.name, action, cid[:12])
        self._event_seq += 1
        if self._listings_from:  # only a listing in flight can be older than it
            self._last_event[cid] = self._event_seq
        if action in _REMOVED_ACTIONS:
            self._removals.removed(cid, self._event_seq)
            # The lookup that follows (the kernel dropped its entry) is
            # answered without asking an engine that would search all of its
            # containers for one the event just said is gone.
            self._misses.gone(cid)
            self._apply(self.table.remove_container(cid, self.top))
            self.files.forget(cid)
            for listener in self.removal_listeners:
                listener(cid)
        elif action in _STOPPED_ACTIONS:
            for listener in self.stop_listeners:
                listener(cid)
        elif action in _STARTED_ACTIONS:
            if action == "start":
                self.logs.container_started(cid)
            for listener in self.start_listeners:
                listener(cid)
        self._schedule_reread(cid)

    def _schedule_reread(self, cid: str) -> None:
        if cid not in self._scheduled:
            self._scheduled.add(cid)
            self._reread_send.send_nowait(cid)

    def events_held(self) -> int:
        """How many containers' event numbers are kept for listings in flight (none when idle)."""
        return len(self._last_event)

    def removals_held(self) -> int:
        """How many removal events are kept for reads in flight (none when idle)."""
        return len(self._removals)

    async def run_rereads(self, nursery: trio.Nursery) -> None:
        async for cid in self._reread_recv:
            nursery.start_soon(self._reread_after_event, cid)

    async def _reread_after_event(self, cid: str) -> None:
        """Re-read a container shortly after its event(s).

        Docker sends some events (pause, for one) just before the state that
        its list endpoint reads is updated, so read after a short delay (which
        also folds a burst such as create+start into one request), and once
        more a little later in case the engine was slow.
        """
        try:
            for i, delay in enumerate(EVENT_REREAD_DELAYS):
                await trio.sleep(delay)
                if i == 0:  # later events schedule their own re-read
                    self._scheduled.discard(cid)
                await self.refresh_container(cid)
        except DockerProblem as exc:
            log.warning("%s: after an event for %s: %s", self.name, cid[:12], exc)
        except Exception:  # a bug must not unmount
            log.exception("%s: after an event for %s", self.name, cid[:12])
        finally:
            self._scheduled.discard(cid)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": dict(self.source.requests),
            # A fake engine times nothing.
            "request_seconds": dict(getattr(self.source, "seconds", {})),
            "events": self.events_up,
            "root": self.files.stats(),
        }


def _entry(containers: list[Container], cid: str) -> Container:
    return next(c for c in containers if container_id(c) == cid)
