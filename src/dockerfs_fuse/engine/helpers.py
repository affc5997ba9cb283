"""Helper containers: created, never started, to read what only a container
can show through the archive API (an image's filesystem; a volume's, mounted
in one), one per thing shown, shared while in use.

- A helper is labelled as ours (HELPER_LABEL, whose value says what it is
  for, and OWNER_LABEL: this host, its boot and this process), so that a
  helper is never mistaken for a user's container and its owner is known.
- It serves while in use: every request that reads through it holds it, and
  so does every open file read through it (acquire ... release). One that
  nobody has held for IDLE seconds is removed; so is every one at unmount.
- A daemon killed before it could remove its helpers (SIGKILL, a crash)
  leaves them behind: the next start on this host removes every helper of
  ours whose owner is no longer running (another boot, or no dockerfs
  process with that PID), and never one a live mount holds. Helpers left by
  a mount on another host are left alone: nothing here can tell whether it
  still runs.

Creating is the engine's (a few tens of ms); a second reader that comes
while a helper is being made waits for that one rather than making another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from dockerfs_fuse.docker.errors import DockerProblem, NotFound

log = logging.getLogger(__name__)

HELPER_LABEL = "dockerfs.helper"
OWNER_LABEL = "dockerfs.helper.owner"
# What the helper shows (an image's ID, a volume's name).
OF_LABEL = "dockerfs.helper.of"
# On a helper that mounts a volume it does not own (a volume's data/): removed
# without `v=1`, for Podman removes an anonymous volume with the last
# container that has it, however it was mounted (Docker keeps those).
KEEP_VOLUMES_LABEL = "dockerfs.helper.keep-volumes"
# A helper nobody held for this long (seconds) is removed.
IDLE = 10.0
# How long unmounting waits for the engine to remove the helpers.
REMOVE_AT_EXIT = 10.0


class HelperEngine(Protocol):
    """What helpers need of an engine (docker/helpers.py over a DockerSource)."""

    async def create(self, body: dict[str, Any]) -> str: ...
    async def remove(self, cid: str, volumes: bool) -> None: ...
    async def list_ours(self) -> list[dict[str, Any]]: ...


def this_owner() -> str:
    """`HOST BOOT PID` of this process: the owner label's value."""
    return f"{socket.gethostname()} {_boot_id()} {os.getpid()}"


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "-"


def _owner_gone(owner: str, mine: str) -> bool:
    """Whether a helper's owner can be seen not to run: on this host, another
    boot, or no dockerfs process with its PID."""
    try:
        host, boot, pid = owner.split(" ")
        my_host, my_boot, my_pid = mine.split(" ")
        number = int(pid)
    except ValueError:
        return False
    if host != my_host or (pid == my_pid and boot == my_boot):
        return False
    if boot != my_boot:
        return True
    try:
        return b"dockerfs" not in Path(f"/proc/{number}/cmdline").read_bytes()
    except OSError:
        return True


@dataclass(eq=False)
class Helper:
    cid: str
    users: int = 0
    last_used: float = 0.0
    # Its anonymous volumes (an image's VOLUMEs) removed with it.
    volumes: bool = True


class Helpers:
    """One engine's helper containers, by (purpose, what they show)."""

    def __init__(
        self,
        engine: HelperEngine,
        *,
        owner: str | None = None,
        idle: float = IDLE,
        on_removed: Callable[[str], None] = lambda cid: None,
    ) -> None:
        self._engine = engine
        self.owner = owner or this_owner()
        self.idle = idle
        self._on_removed = on_removed
        self._helpers: dict[tuple[str, str], Helper] = {}
        self._making: dict[tuple[str, str], trio.Event] = {}
        self._held = trio.Event()  # wakes the sweeper
        self.created = 0
        self.removed = 0

    def __len__(self) -> int:
        return len(self._helpers)

    def made(self, cid: str) -> bool:
        """Whether `cid` is one of these helpers."""
        return any(helper.cid == cid for helper in self._helpers.values())

    def acquire_now(self, purpose: str, of: str) -> str | None:
        """The helper's ID, held, if it exists now; else None."""
        helper = self._helpers.get((purpose, of))
        if helper is None:
            return None
        helper.users += 1
        return helper.cid

    async def acquire(
        self, purpose: str, of: str, body: Callable[[], Awaitable[dict[str, Any]]]
    ) -> str:
        """The helper's ID, held (release it), made from `body()` (the create
        request's body, our labels added) if there is none. Raises DockerProblem."""
        key = (purpose, of)
        while True:
            cid = self.acquire_now(purpose, of)
            if cid is not None:
                return cid
            making = self._making.get(key)
            if making is None:
                break
            await making.wait()
        self._making[key] = making = trio.Event()
        try:
            request = dict(await body())
            labels: dict[str, str] = dict(request.get("Labels") or {})
            labels.update({HELPER_LABEL: purpose, OWNER_LABEL: self.owner, OF_LABEL: of})
            request["Labels"] = labels
            cid = await self._engine.create(request)
            self.created += 1
            log.debug("helper %s for %s %s", cid[:12], purpose, of[:24])
            keep = labels.get(KEEP_VOLUMES_LABEL) == "1"
            self._helpers[key] = Helper(cid, users=1, volumes=not keep)
            self._held.set()
            return cid
        finally:
            del self._making[key]
            making.set()

    def release(self, purpose: str, of: str, cid: str) -> None:
        helper = self._helpers.get((purpose, of))
        if helper is not None and helper.cid == cid:
            helper.users -= 1
            helper.last_used = trio.current_time()

    @contextlib.asynccontextmanager
    async def held(
        self, purpose: str, of: str, body: Callable[[], Awaitable[dict[str, Any]]]
    ) -> AsyncIterator[str]:
        """The helper's ID, held for the block."""
        cid = await self.acquire(purpose, of, body)
        try:
            yield cid
        finally:
            self.release(purpose, of, cid)

    # -- removal ---------------------------------------------------------------------

    def gone(self, cid: str) -> None:
        """The engine removed a container (its event): if it was a helper of
        ours (`docker container prune`, by hand), its record goes, so the next
        reader makes a new one instead of asking one that is not there."""
        for key, helper in list(self._helpers.items()):
            if helper.cid == cid:
                del self._helpers[key]
                self._on_removed(cid)

    async def _remove(self, cid: str, volumes: bool) -> None:
        self._on_removed(cid)
        try:
            await self._engine.remove(cid, volumes)
            self.removed += 1
        except NotFound:
            pass  # removed already (by hand, say)
        except DockerProblem as exc:
            log.warning("removing helper container %s: %s", cid[:12], exc)

    async def sweep(self) -> None:
        """Remove the helpers nobody has held for `idle` seconds."""
        now = trio.current_time()
        idle = [
            key
            for key, h in self._helpers.items()
            if h.users <= 0 and now - h.last_used >= self.idle
        ]
        for key in idle:
            helper = self._helpers.pop(key)
            await self._remove(helper.cid, helper.volumes)

    async def remove_all(self) -> None:
        helpers, self._helpers = self._helpers, {}
        for helper in helpers.values():
            await self._remove(helper.cid, helper.volumes)

    async def remove_leftovers(self) -> None:
        """Remove the helpers a daemon on this host left when it was killed."""
        try:
            found = await self._engine.list_ours()
        except DockerProblem as exc:
            log.warning("listing helper containers left behind: %s", exc)
            return
        mine = {h.cid for h in self._helpers.values()}
        for c in found:
            labels = c.get("Labels")
            owner = labels.get(OWNER_LABEL) if isinstance(labels, Mapping) else None
            cid = str(c.get("Id") or "")
            if (
                cid
                and cid not in mine
                and isinstance(owner, str)
                and _owner_gone(owner, self.owner)
            ):
                log.info("removing helper container %s left by %s", cid[:12], owner)
                assert isinstance(labels, Mapping)
                await self._remove(cid, labels.get(KEEP_VOLUMES_LABEL) != "1")

    async def run(self) -> None:
        """Remove leftovers, then idle helpers as they become idle, then every
        helper when cancelled (unmount): a task in the main nursery."""
        try:
            await self.remove_leftovers()
            while True:
                await self._held.wait()
                while self._helpers:
                    await trio.sleep(self.idle / 4)
                    await self.sweep()
                self._held = trio.Event()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(REMOVE_AT_EXIT):
                await self.remove_all()
