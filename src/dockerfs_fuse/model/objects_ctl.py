"""The language of the engine view's `ctl` files, and the containers a compose
project's command touches, in the order `docker compose` touches them.

```
images/<id>/ctl        tag REF | untag REF | rm | rm -f
volumes/<name>/ctl     rm | rm -f
networks/<name>/ctl    connect CONTAINER | disconnect CONTAINER | rm
projects/<p>/ctl       start | stop [S] | restart [S] | pause | unpause | kill [SIGNAL] | rm
```

One command per write, as for a container's ctl (model/ctl.py, whose
BadCommand and bounds these share): pure, so every bad line is refused
(EINVAL) before Docker hears of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from dockerfs_fuse.model.containers import container_id, could_name_an_object, escape_name
from dockerfs_fuse.model.ctl import COMMANDS, BadCommand, Command, parse_command, split_command
from dockerfs_fuse.model.objects import NUMBER_LABEL, SERVICE_LABEL, project_of
from dockerfs_fuse.model.swarm import Obj

__all__ = [
    "DEPENDS_LABEL",
    "ONEOFF_LABEL",
    "BadCommand",
    "ObjectCommand",
    "Step",
    "parse_object_command",
    "project_steps",
    "split_reference",
]

VERBS = {
    "images": ("tag", "untag", "rm"),
    "volumes": ("rm",),
    "networks": ("connect", "disconnect", "rm"),
    "projects": COMMANDS,
}
USAGE = {
    "images": "tag REF | untag REF | rm | rm -f",
    "volumes": "rm | rm -f",
    "networks": "connect CONTAINER | disconnect CONTAINER | rm",
    "projects": "start | stop [SECONDS] | restart [SECONDS] | pause | unpause | kill [SIGNAL] | rm",
}

# Labels `docker compose` v2 puts on a container beside those model/objects.py reads.
ONEOFF_LABEL = "com.docker.compose.oneoff"
DEPENDS_LABEL = "com.docker.compose.depends_on"

# Docker's reference grammar (distribution/reference): a name of lowercase
# path components, maybe after a registry host, then `:tag` or `@digest`.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = re.compile(rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?")
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
MAX_NAME = 255  # Docker's bound on a repository name


@dataclass(frozen=True)
class ObjectCommand:
    """An image's, volume's or network's command: `arg` a reference or a
    container, `force` for `rm -f`."""

    action: str
    arg: str = ""
    force: bool = False


def parse_object_command(kind: str, data: bytes) -> ObjectCommand | Command:
    """One write to `<kind>/<name>/ctl`: a project's is a container's command."""
    if kind == "projects":
        return parse_command(data)
    if kind not in VERBS:
        raise BadCommand(f"{kind} have no ctl")
    action, args = split_command(data, VERBS[kind])
    if action == "rm":
        if args not in ([], ["-f"]) or (args and kind == "networks"):
            raise BadCommand(f"usage: {USAGE[kind]}")
        return ObjectCommand(action, force=bool(args))
    if len(args) != 1:
        raise BadCommand(f"usage: {USAGE[kind]}")
    arg = args[0]
    if kind == "networks":
        if not could_name_an_object(arg):
            raise BadCommand(f"not a container name, ID or prefix: {arg[:80]!r}")
        return ObjectCommand(action, arg)
    repo, tag, digest = split_reference(arg)
    if action == "tag" and digest:
        raise BadCommand(f"tag takes a name and tag, not a digest: {arg[:80]!r}")
    return ObjectCommand(action, f"{repo}@{digest}" if digest else f"{repo}:{tag}")


def split_reference(ref: str) -> tuple[str, str, str]:
    """(repository, tag, digest) of an image reference; the tag is `latest`
    when neither is given, as Docker reads it. BadCommand unless Docker's
    grammar allows it."""
    bad = BadCommand(f"not an image reference: {ref[:80]!r}")
    name, _, digest = ref.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise bad
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise bad
    if not name or len(name) > MAX_NAME:
        raise bad
    host, _, path = name.partition("/")
    # As Docker: the first part is a registry only if it looks like a host.
    if path and ("." in host or ":" in host or host == "localhost"):
        if not _HOST.fullmatch(host):
            raise bad
    else:
        path = name
    if not _PATH.fullmatch(path):
        raise bad
    return name, tag or ("" if digest else "latest"), digest


# -- compose projects -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One container's part of a project's command; `name` says which, to a user."""

    cid: str
    name: str
    command: Command


@dataclass(frozen=True)
class _Rule:
    states: frozenset[str] | None  # the states it touches (None: every container)
    oneoffs: bool  # whether `compose run` containers are touched too
    dependents_first: bool


_RUNNING = frozenset({"running", "paused", "restarting"})
# What `docker compose <verb> PROJECT` (v2, with the project's name only)
# touches: each verb lists the project's containers as compose does, and
# leaves out those the verb would only be refused for (a paused one by
# pause, a running one by start) rather than fail the whole command.
RULES = {
    "start": _Rule(frozenset({"created", "exited"}), False, False),
    "stop": _Rule(_RUNNING, True, True),
    "restart": _Rule(None, False, False),
    "pause": _Rule(frozenset({"running"}), False, True),
    "unpause": _Rule(frozenset({"paused"}), False, False),
    "kill": _Rule(_RUNNING, True, True),
    "rm": _Rule(frozenset({"created", "exited", "dead"}), False, True),
}


def _label(c: Obj, key: str) -> str:
    labels = c.get("Labels")
    return str(labels.get(key) or "") if isinstance(labels, dict) else ""


def project_members(containers: Iterable[Obj], project: str) -> list[Obj]:
    """The containers of the project whose directory is `project` (its escaped name)."""
    return [c for c in containers if container_id(c) and escape_name(project_of(c)) == project]


def project_steps(containers: Iterable[Obj], command: Command) -> list[Step]:
    """What `command` does to a project's containers, in order: services in the
    order their `depends_on` labels give (dependencies first; dependents first
    for stop, kill, pause and rm), containers of a service by number."""
    rule = RULES[command.action]
    chosen = [
        c
        for c in containers
        if (rule.states is None or c.get("State") in rule.states)
        and (rule.oneoffs or _label(c, ONEOFF_LABEL) != "True")
    ]
    order = service_order(chosen)
    if rule.dependents_first:
        order.reverse()
    rank = {service: i for i, service in enumerate(order)}
    chosen.sort(key=lambda c: (rank[_label(c, SERVICE_LABEL)], _number(c), container_id(c)))
    return [Step(container_id(c), _member_name(c), command) for c in chosen]


def service_order(containers: Iterable[Obj]) -> list[str]:
    """The project's services, each after those its `depends_on` label names
    (ties, and a cycle, by name)."""
    needs: dict[str, set[str]] = {}
    for c in containers:
        deps = needs.setdefault(_label(c, SERVICE_LABEL), set())
        for entry in _label(c, DEPENDS_LABEL).split(","):
            if dep := entry.split(":", 1)[0].strip():
                deps.add(dep)
    order: list[str] = []
    left = dict(sorted(needs.items()))
    while left:
        ready = [s for s, deps in left.items() if not deps & left.keys()] or [next(iter(left))]
        for s in ready:
            order.append(s)
            del left[s]
    return order


def _number(c: Obj) -> tuple[int, str]:
    n = _label(c, NUMBER_LABEL)
    return (int(n), "") if n.isdigit() else (1 << 31, n)


def _member_name(c: Obj) -> str:
    """`web/2`, as the project's services/ directory shows it."""
    service = _label(c, SERVICE_LABEL) or "-"
    return f"{service}/{_label(c, NUMBER_LABEL) or container_id(c)[:12]}"
