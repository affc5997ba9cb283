"""One engine's Swarm view (`--swarm`): what keeps services/, nodes/ and tasks/ fresh.

The sibling of cache.EngineCache for a cluster: it owns the engine's top
directory in the inode table, the three lists under it, the last answer of
each list, and the event stream. What changed goes to `on_changes`, as with
containers, so the FUSE adapter only answers the kernel.

Freshness, as the contract asks (at most about a second behind Docker):

- reading services/, nodes/ or tasks/ lists that one kind again (one
  request; readers that arrive meanwhile share it);
- service and node events re-read their list; container events of the
  manager's own tasks re-read the tasks;
- a task's state on another node sends no event to this engine, so while
  the cluster converges (a service's running count is not its desired
  count, a task is being stopped, or an event came in the last
  BUSY_SECONDS) services and tasks are re-listed every POLL_INTERVAL; a
  settled cluster costs no request at all.

Every directory is rebuilt from the three lists (swarm_tree, pure); the
table keeps the inodes of the names that stay.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import trio

from dockerfs_fuse.docker import swarm as api
from dockerfs_fuse.docker.bridge import Stream
from dockerfs_fuse.docker.errors import DockerProblem, NotFound, NotManager
from dockerfs_fuse.docker.source import DockerSource, Event
from dockerfs_fuse.engine.containers import ATTR_TIMEOUT, FALLBACK_TIMEOUT, MAX_LOG_SPOOLS
from dockerfs_fuse.engine.listed import ListedKinds, Lister
from dockerfs_fuse.engine.logs import LogSpools, LogWriter
from dockerfs_fuse.engine.refresh import follow_events
from dockerfs_fuse.engine.spool import Cancellable
from dockerfs_fuse.model.containers import could_name_an_object
from dockerfs_fuse.model.inodes import NS, Changes, InodeTable, Node, owner_dir
from dockerfs_fuse.model.swarm import (
    TOP,
    Obj,
    created_seconds,
    node_aliases,
    node_names,
    node_spec,
    object_id,
    service_aliases,
    service_name,
    service_spec,
    task_spec,
)
from dockerfs_fuse.model.swarm_ctl import parse_node_command, parse_service_command

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0
BUSY_SECONDS = 30.0
# Events come in bursts (a service update sends one per task it replaces): fold them.
EVENT_DELAY = 0.05
_SETTLING = ("updating", "rollback_started", "rollback_paused", "paused")
# Retries of a dropped swarm event stream: 0.5 s doubling to this, four times a
# container view's cap (RECONNECT_MAX). Each reconnect lists the whole cluster
# three times (services, nodes, tasks), and an engine that is no manager
# refuses all three for as long as the mount lasts: retried less often, that
# costs the engine less, and the view lags a restarted manager by 4 s at most.
SWARM_RECONNECT_MAX = 4.0

_LISTS: Mapping[str, Lister] = {
    "services": api.list_services,
    "nodes": api.list_nodes,
    "tasks": api.list_tasks,
}


class SwarmCache(ListedKinds):
    """The cluster one engine manages, kept fresh under `top` in `table`."""

    where = "in the cluster"

    def __init__(
        self,
        name: str,
        source: DockerSource,
        table: InodeTable,
        top: Node,
        on_changes: Callable[[Changes], None],
        *,
        optional: bool = False,
    ) -> None:
        super().__init__(name, source, table, top, on_changes, _LISTS)
        # The engine view's swarm/: on an engine that manages no cluster it
        # lists nothing and follows no events, instead of failing.
        self.optional = optional
        self.attr_timeout = ATTR_TIMEOUT
        self.events_up = False
        self._pending: set[str] = set()
        self._wake = trio.Event()
        self._busy_until = 0.0
        # services/<name>/logs: spooled as a container's logs are, by directory name.
        self.logs = LogSpools(self._stream_logs, self._service_listed, MAX_LOG_SPOOLS)

    async def refresh(self, kind: str) -> None:
        try:
            await super().refresh(kind)
        except (NotManager, NotFound):  # a worker; an engine with no Swarm API (Podman)
            if not self.optional:
                raise
            if self.objects[kind]:  # it managed one, and no longer does
                self.objects[kind] = []
                self._rebuild()

    def _kept(self, kind: str, found: list[Obj]) -> list[Obj]:
        return [o for o in found if object_id(o)]

    def _rebuild(self, kind: str = "") -> None:
        """Every directory, from the three lists: a service shows its tasks,
        a task its service's and node's names."""
        services, tasks, nodes = (self.objects[k] for k in ("services", "tasks", "nodes"))
        nnames = node_names(nodes)
        snames = {object_id(s): service_name(s) for s in services}
        trees = {
            "services": {
                service_name(s): (_mtime(s), service_spec(s, tasks, nnames)) for s in services
            },
            "nodes": {nnames[object_id(n)]: (_mtime(n), node_spec(n)) for n in nodes},
            "tasks": {object_id(t): (_mtime(t), task_spec(t, snames, nnames)) for t in tasks},
        }
        refs = {
            "services": {service_name(s): object_id(s) for s in services},
            "nodes": {nnames[object_id(n)]: object_id(n) for n in nodes},
            "tasks": {object_id(t): object_id(t) for t in tasks},
        }
        self._publish(trees, refs)

    def _aliases(self, kind: str) -> Mapping[str, str]:
        if kind == "services":
            return service_aliases(self.objects["services"])
        if kind == "nodes":
            return node_aliases(self.objects["nodes"])
        return {}

    def _may_name(self, name: str) -> bool:
        return could_name_an_object(name)

    # -- what an object shows that its list entry does not ---------------------------

    async def inspect(self, kind: str, oid: str) -> dict[str, Any]:
        calls = {"services": api.inspect_service, "nodes": api.inspect_node}
        return await calls.get(kind, api.inspect_task)(self.source, oid)

    def _stream_logs(self, name: str, out: LogWriter, follow: bool) -> Cancellable:
        sid = self._refs["services"].get(name) or name
        return self.source.stream_logs(sid, out, follow, kind="services")

    def _service_listed(self, name: str) -> bool:
        """Whether following its log may bring more: a service's tasks may
        always start again, so while the service is there."""
        return name in self._refs["services"]

    def log_key(self, node: Node) -> str:
        """The spool key of a services/<name>/.live/logs node: the service's name."""
        kind, _ = self.locate(node)
        owner = owner_dir(node)
        if kind != "services" or owner is None:
            raise NotFound("only a service has logs")
        return owner.name

    async def control(self, kind: str, oid: str, data: bytes) -> str:
        """Carry out one ctl write; returns the command's action, for the log.
        The change is shown at once (a re-list), and the cluster polled while
        it converges."""
        if kind == "services":
            command = parse_service_command(data)
            await api.control_service(self.source, oid, command)
            again: Iterable[str] = ("services", "tasks")
        elif kind == "nodes":
            command = parse_node_command(data)
            await api.control_node(self.source, oid, command)
            again = ("nodes", "services", "tasks")
        else:
            raise NotFound("a task has no ctl")
        self._busy_until = time.monotonic() + BUSY_SECONDS
        for k in again:
            try:
                await self.refresh(k)
            except DockerProblem as exc:  # the command itself succeeded
                log.warning("%s: after ctl %s: %s", self.name, command.action, exc)
        self._wake.set()
        return command.action

    # -- the event stream ----------------------------------------------------------

    async def run_events(self) -> None:
        """Keep the view fresh between listings (a task in the main nursery)."""
        try:
            local = await api.local_node(self.source)
        except DockerProblem as exc:
            local = {}
            log.warning("%s: cannot ask whether this engine manages a swarm: %s", self.name, exc)
        if self.optional and not local.get("ControlAvailable"):
            log.info(
                "%s: not a swarm manager (swarm state %r): swarm/ lists nothing and "
                "follows no events",
                self.name,
                local.get("LocalNodeState") or "unknown",
            )
            return
        if local and not local.get("ControlAvailable"):
            log.warning(
                "%s: this engine is not a swarm manager (swarm state %r): its cluster "
                "cannot be listed here, and ctl writes fail with EIO",
                self.name,
                local.get("LocalNodeState") or "inactive",
            )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_fresh)
            await follow_events(self, "swarm event stream", SWARM_RECONNECT_MAX, logger=log)

    def open_events(self) -> Stream[Event]:
        return api.events(self.source)

    async def resync(self) -> None:
        for kind in TOP:
            await self.refresh(kind)

    def set_events_up(self, up: bool) -> None:
        self.events_up = up
        self.attr_timeout = ATTR_TIMEOUT if up else FALLBACK_TIMEOUT

    def on_event(self, event: Event) -> None:
        etype = event.get("Type")
        action = str(event.get("Action") or "")
        actor = event.get("Actor") or {}
        oid = str(actor.get("ID") or "")
        if etype == "service":
            if action == "remove" and oid:
                # Gone at once, without waiting for the list.
                self.objects["services"] = [
                    s for s in self.objects["services"] if object_id(s) != oid
                ]
                self._rebuild()
            self._pending |= {"services", "tasks"}
        elif etype == "node":
            self._pending |= {"nodes", "services", "tasks"}
        elif etype == "container":
            if not (actor.get("Attributes") or {}).get("com.docker.swarm.task.id"):
                return
            self._pending |= {"services", "tasks"}
        else:
            return
        log.debug("%s: event %s %s %s", self.name, etype, action, oid[:12])
        self._busy_until = time.monotonic() + BUSY_SECONDS
        self._wake.set()

    def _busy(self) -> bool:
        return time.monotonic() < self._busy_until or not settled(
            self.objects["services"], self.objects["tasks"]
        )

    async def _keep_fresh(self) -> None:
        while True:
            with trio.move_on_after(POLL_INTERVAL if self._busy() else math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            await trio.sleep(EVENT_DELAY)
            kinds = self._pending or ({"services", "tasks"} if self._busy() else set())
            self._pending = set()
            for kind in TOP:
                if kind in kinds:
                    try:
                        await self.refresh(kind)
                    except DockerProblem as exc:
                        log.debug("%s: re-reading %s: %s", self.name, kind, exc)
                    except Exception:  # a bug must not unmount
                        log.exception("%s: re-reading %s", self.name, kind)

    def stats(self) -> dict[str, Any]:
        return {"requests": dict(self.source.requests), "events": self.events_up}


def _mtime(obj: Obj) -> int:
    return created_seconds(obj) * NS


def settled(services: list[Obj], tasks: list[Obj]) -> bool:
    """Nothing the orchestrator is still doing that no event would tell us of."""
    for s in services:
        status = s.get("ServiceStatus") or {}
        if status.get("RunningTasks") != status.get("DesiredTasks"):
            return False
        if (s.get("UpdateStatus") or {}).get("State") in _SETTLING:
            return False
    for t in tasks:
        state = (t.get("Status") or {}).get("State")
        desired = t.get("DesiredState")
        if desired == "running" and state != "running":
            return False
        if desired in ("shutdown", "remove") and state in ("running", "starting"):
            return False
    return True
