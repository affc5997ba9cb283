"""The language of a service's and a node's `ctl` file, and the API request each
command becomes.

services/<name>/ctl   scale N | image REF | rollback | restart | rm
nodes/<name>/ctl      drain | active | pause | promote | demote | rm

One command per write, as in control.py (whose BadCommand this shares, so
the FUSE layer maps both to EINVAL). Swarm objects are changed by sending
back their whole spec with the version it was read at, so a command is
turned into a request from the object as Docker last described it: pure
functions of plain dicts, every bad input rejected before anything is sent.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockerfs_fuse.model.ctl import BadCommand, split_command

__all__ = [
    "NODE_COMMANDS",
    "SERVICE_COMMANDS",
    "BadCommand",
    "Request",
    "SwarmCommand",
    "node_request",
    "parse_node_command",
    "parse_service_command",
    "service_request",
]

SERVICE_COMMANDS = ("scale", "image", "rollback", "restart", "rm")
NODE_COMMANDS = ("drain", "active", "pause", "promote", "demote", "rm")
MAX_REPLICAS = 10_000  # far more than one host could run; a typo's bound, not Docker's
MAX_REF = 512
# A reference's characters (name, tag, digest); Docker checks the grammar itself.
_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


@dataclass(frozen=True)
class SwarmCommand:
    action: str
    arg: str = ""


@dataclass(frozen=True)
class Request:
    """One Docker API call: `body` is sent as JSON when not None."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None


def parse_service_command(data: bytes) -> SwarmCommand:
    action, args = split_command(data, SERVICE_COMMANDS)
    wants = 1 if action in ("scale", "image") else 0
    if len(args) != wants:
        usage = {"scale": "scale N", "image": "image REF"}.get(action, action)
        raise BadCommand(f"usage: {usage}")
    if action == "scale":
        n = args[0]
        if not n.isdigit() or int(n) > MAX_REPLICAS:
            raise BadCommand(f"N must be a whole number from 0 to {MAX_REPLICAS}: {n}")
        return SwarmCommand(action, str(int(n)))
    if action == "image":
        ref = args[0]
        if len(ref) > MAX_REF or not _REF.fullmatch(ref):
            raise BadCommand(f"not an image reference: {ref[:80]!r}")
        return SwarmCommand(action, ref)
    return SwarmCommand(action)


def parse_node_command(data: bytes) -> SwarmCommand:
    action, args = split_command(data, NODE_COMMANDS)
    if args:
        raise BadCommand(f"{action} takes no argument")
    return SwarmCommand(action)


def _version(obj: Mapping[str, Any]) -> str:
    index = (obj.get("Version") or {}).get("Index")
    if not isinstance(index, int):
        raise BadCommand("Docker gave no version for this object")  # not seen; never guess
    return str(index)


def _spec(obj: Mapping[str, Any]) -> dict[str, Any]:
    spec = obj.get("Spec")
    if not isinstance(spec, Mapping):
        raise BadCommand("Docker gave no spec for this object")
    return copy.deepcopy(dict(spec))


def service_request(service: Mapping[str, Any], command: SwarmCommand) -> Request:
    """The request that carries out `command` on `service` (GET /services/{id}'s answer).

    restart is the CLI's `--force`: bumping ForceUpdate makes every task be
    replaced although nothing else changed. rollback asks the engine for its
    server-side rollback to PreviousSpec (it ignores the spec sent along).
    """
    sid = str(service.get("ID") or "")
    if not sid:
        raise BadCommand("Docker gave no ID for this service")
    if command.action == "rm":
        return Request("DELETE", f"services/{sid}")
    spec = _spec(service)
    params = {"version": _version(service)}
    if command.action == "scale":
        mode = spec.get("Mode") or {}
        if "Replicated" not in mode:
            raise BadCommand("scale: only a replicated service has a number of replicas")
        mode["Replicated"] = {**(mode["Replicated"] or {}), "Replicas": int(command.arg)}
    elif command.action == "image":
        template = spec.setdefault("TaskTemplate", {})
        template.setdefault("ContainerSpec", {})["Image"] = command.arg
    elif command.action == "restart":
        template = spec.setdefault("TaskTemplate", {})
        template["ForceUpdate"] = int(template.get("ForceUpdate") or 0) + 1
    elif command.action == "rollback":
        params["rollback"] = "previous"
    else:
        raise BadCommand(f"unknown command {command.action!r}")
    return Request("POST", f"services/{sid}/update", params, spec)


def node_request(node: Mapping[str, Any], command: SwarmCommand) -> Request:
    """The request that carries out `command` on `node` (GET /nodes/{id}'s answer).
    rm is not forced: Docker refuses a node that is up, or a manager."""
    nid = str(node.get("ID") or "")
    if not nid:
        raise BadCommand("Docker gave no ID for this node")
    if command.action == "rm":
        return Request("DELETE", f"nodes/{nid}")
    spec = _spec(node)
    if command.action in ("drain", "active", "pause"):
        spec["Availability"] = command.action
    elif command.action in ("promote", "demote"):
        spec["Role"] = "manager" if command.action == "promote" else "worker"
    else:
        raise BadCommand(f"unknown command {command.action!r}")
    return Request("POST", f"nodes/{nid}/update", {"version": _version(node)}, spec)
