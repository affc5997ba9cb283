"""What a write to an image's, volume's, network's or compose project's `ctl`
does (`--view=engine`): the command (model/objects_ctl.py) carried out through
docker/objects.py, then its kind listed again, so that the tree shows the
effect when the write returns.

A project's command is one container command per container it touches
(model/objects_ctl.project_steps, from a fresh listing of the project), one
after the other; the first refusal ends it, as it ends `docker compose`, and
the error then names the container, what was done and what was not tried.
Each container done is re-read in `containers/` as its own ctl would.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from dockerfs_fuse.docker import objects as api
from dockerfs_fuse.docker.errors import DockerProblem, DockerUnavailable, NotFound
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.model.ctl import Command
from dockerfs_fuse.model.objects_ctl import (
    ObjectCommand,
    Step,
    parse_object_command,
    project_members,
    project_steps,
)

log = logging.getLogger(__name__)

# How many names a refusal lists of the containers done and not tried.
SHOWN_MEMBERS = 8


class ContainerRefresher(Protocol):
    """The engine's containers/ (engine/containers.py): shown anew after a command."""

    async def refresh_container(self, cid: str) -> None: ...


async def control(
    objects: ObjectsCache,
    kind: str,
    ref: str,
    data: bytes,
    containers: ContainerRefresher | None = None,
) -> str:
    """Carry out one ctl write to `kind`/`ref` (what ObjectsCache.locate says);
    returns what was done, for the log. Raises BadCommand before anything is
    sent, or Docker's refusal."""
    command = parse_object_command(kind, data)
    try:
        if isinstance(command, Command):
            return await _control_project(objects, ref, command, containers)
        return await _control_object(objects, kind, ref, command, containers)
    finally:
        try:
            await objects.refresh(kind)
        except DockerProblem as exc:  # what the command did stands
            log.warning("%s: after ctl of %s/%s: %s", objects.name, kind, ref[:12], exc)


async def _control_object(
    objects: ObjectsCache,
    kind: str,
    ref: str,
    c: ObjectCommand,
    containers: ContainerRefresher | None,
) -> str:
    source = objects.source
    if kind == "images" and c.action == "tag":
        repo, _, tag = c.arg.rpartition(":")
        await api.tag_image(source, ref, repo, tag)
    elif kind == "images" and c.action == "untag":
        # Only a reference this image has: another image's tag is not this ctl's.
        info = await api.inspect_image(source, ref)
        if c.arg not in [*(info.get("RepoTags") or ()), *(info.get("RepoDigests") or ())]:
            raise NotFound(f"{c.arg} is not a tag or digest of this image")
        await api.remove_image(source, c.arg)
    elif kind == "images":
        await api.remove_image(source, ref, force=c.force)
    elif kind == "volumes":
        await api.remove_volume(source, ref, force=c.force)
    elif c.action in ("connect", "disconnect"):
        await api.connect_network(source, ref, c.arg, connect=c.action == "connect")
        if containers is not None:
            await _show_container(objects, c.arg, containers)
    else:
        await api.remove_network(source, ref)
    return " ".join(w for w in (c.action, "-f" if c.force else "", c.arg) if w)


async def _control_project(
    objects: ObjectsCache, project: str, command: Command, containers: ContainerRefresher | None
) -> str:
    members = project_members(await api.list_project_containers(objects.source), project)
    if not members:
        raise NotFound(f"project {project} has no containers")
    steps = project_steps(members, command)
    done: list[Step] = []
    try:
        await run_steps(steps, objects.source.control, done)
    finally:
        if containers is not None:
            for step in done:
                try:
                    await containers.refresh_container(step.cid)
                except DockerProblem as exc:
                    log.warning("%s: after ctl of %s: %s", objects.name, step.name, exc)
    return f"{command.action} of {len(done)} of {len(members)} containers"


async def _show_container(objects: ObjectsCache, name: str, containers: ContainerRefresher) -> None:
    """Re-read the container a network command named (by its name, ID or
    prefix): its Networks/ changed, and Docker sends no container event."""
    try:
        cid = str((await objects.source.inspect(name)).get("Id") or "")
        if cid:
            await containers.refresh_container(cid)
    except DockerProblem as exc:  # the command itself succeeded
        log.warning("%s: after ctl of a network: %s: %s", objects.name, name, exc)


async def run_steps(
    steps: Sequence[Step],
    run: Callable[[str, Command], Awaitable[None]],
    done: list[Step],
) -> None:
    """Each step in turn; a container gone meanwhile is left out, as compose
    leaves it. The first refusal is raised again, of the same kind (so the
    same errno), with what was done and what was not tried."""
    for i, step in enumerate(steps):
        try:
            await run(step.cid, step.command)
        except NotFound:
            continue  # removed, or on its way out, since the listing
        except DockerProblem as exc:
            raise _partial(exc, step, done, steps[i + 1 :]) from exc
        done.append(step)


def _partial(exc: DockerProblem, step: Step, done: list[Step], left: Sequence[Step]) -> Exception:
    why = f"{step.name} ({step.cid[:12]}): {exc}; done: {_names(done)}; not tried: {_names(left)}"
    if isinstance(exc, DockerUnavailable):
        return DockerUnavailable(why, exc.cause)
    return type(exc)(why)


def _names(steps: Sequence[Step]) -> str:
    names = [s.name for s in steps[:SHOWN_MEMBERS]]
    if len(steps) > SHOWN_MEMBERS:
        names.append(f"and {len(steps) - SHOWN_MEMBERS} more")
    return ", ".join(names) or "none"
