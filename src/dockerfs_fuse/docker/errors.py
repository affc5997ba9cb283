"""What went wrong talking to Docker, in the few kinds the rest of the program tells apart.

Every failure of a request to the engine is translated here, once, by
`translate`; the FUSE adapter turns these kinds into errnos in one place.
Only what a request to the engine fails with (`DOCKER_ERRORS`) is
translated: anything else is a bug of ours and propagates as it is, to be
logged with its traceback where it surfaces.

What Swarm adds to the kinds:

- a worker's API refuses every cluster request with 503: `NotManager`
  (an ApiError, so EIO), with Docker's own explanation;
- Swarm's "failed precondition" (removing a node that is up, demoting the
  last manager, rolling back a service that was never updated) comes as a
  400 or 500: `Conflict` (EBUSY), like a container's state conflicts;
- an update sent with a version someone else has since replaced ("update
  out of sequence"): `OutOfSequence`, which the caller retries on a fresh read.

What the engine view's ctl adds (networks, images, volumes):

- "already exists" (403 or 409: connecting a container already on the
  network): `AlreadyExists`, a Conflict the FUSE layer tells apart (EEXIST);
- any other 403 (removing `host`): `Forbidden` (EPERM);
- "is not connected to network" (500) and "has active endpoints" (403):
  state conflicts, as a container's are.
"""

from __future__ import annotations

import json
import re

import aiodocker
import aiohttp

from dockerfs_fuse.docker import unreachable


class DockerProblem(Exception):
    """Anything that went wrong talking to Docker; message is Docker's own."""


class DockerUnavailable(DockerProblem):
    """The engine cannot be reached or did not answer in time; `cause` is
    what the connection failed on, when known (see unreachable.py)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class NotFound(DockerProblem):
    """HTTP 404, or being removed: the container (or image) is gone or going."""


class Conflict(DockerProblem):
    """HTTP 409, or a state conflict Docker answers otherwise (unpause: 500)."""


class AlreadyExists(Conflict):
    """What a command would make is there already: a name in use, a container
    already on a network (EEXIST)."""


class NoSpace(DockerProblem):
    """Creating or pulling: the engine's disk is full (ENOSPC)."""


class ReadOnlyFs(DockerProblem):
    """Writing a container's files: its root filesystem (or the volume
    there) is read-only (EROFS)."""


class Forbidden(DockerProblem):
    """HTTP 403 that is no conflict: Docker never allows it (removing `host`)."""


class BadRequest(DockerProblem):
    """HTTP 400: Docker refused the arguments."""


class ApiError(DockerProblem):
    """Any other error status."""


class NotManager(ApiError):
    """The engine is a swarm worker (or in no swarm): it cannot see or change the cluster."""


class OutOfSequence(Conflict):
    """The object changed between our read and our update."""


# What a request to the engine fails with (a timeout is an OSError; an answer
# that is not JSON is the engine's fault too): only these become DockerProblem.
DOCKER_ERRORS = (
    DockerProblem,
    aiodocker.DockerError,
    aiohttp.ClientError,
    OSError,
    json.JSONDecodeError,
)

# aiodocker's status for "could not connect" (no HTTP status at all).
CONNECT_FAILED = 900

# Docker's answers for a container that is being removed (or failed to be:
# "dead"); to a reader, it is going away. Docker 20.10: 409 from logs, start
# and rm; 500 from restart ("Cannot restart container ...: " + start's).
_GOING_AWAY = re.compile(r"marked for removal|removal of container .* is already in progress")
# Docker's answers that a command does not fit the container's state, not all
# 409: unpause of a container that is not paused is a 500 in Docker 20.10.
_STATE_CONFLICT = re.compile(
    r"is not running|is not paused|is already paused|is paused|is restarting"
    r"|cannot start a paused container|You cannot remove a \w+ container"
    r"|is not connected to network|has active endpoints"
)


def translate(
    exc: DockerProblem
    | aiodocker.DockerError
    | aiohttp.ClientError
    | OSError
    | json.JSONDecodeError,
) -> DockerProblem:
    """One of DOCKER_ERRORS as the kind of problem it is."""
    if isinstance(exc, DockerProblem):
        return exc
    if isinstance(exc, aiodocker.DockerError):
        return _answered(exc)
    if isinstance(exc, TimeoutError):  # asyncio's too
        return DockerUnavailable("Docker did not answer in time")
    if isinstance(exc, json.JSONDecodeError):
        return ApiError(f"Docker's answer is not JSON: {exc}")
    cause = unreachable.root_cause(exc)
    return DockerUnavailable(f"cannot reach Docker: {unreachable.reason(cause) or exc}", cause)


def _answered(exc: aiodocker.DockerError) -> DockerProblem:
    """An error status (or aiodocker's failure to connect)."""
    message = str(getattr(exc, "message", exc))
    status = getattr(exc, "status", 0)
    if status == CONNECT_FAILED:
        cause = unreachable.root_cause(exc)
        words = unreachable.reason(cause)
        return DockerUnavailable(f"cannot reach Docker: {words}" if words else message, cause)
    swarm = _swarm_problem(status, message)
    if swarm is not None:
        return swarm
    kind: type[DockerProblem]
    if status == 404 or _GOING_AWAY.search(message):
        kind = NotFound
    elif status in (403, 409) and "already exists" in message:
        kind = AlreadyExists
    elif status == 409 or _STATE_CONFLICT.search(message):
        kind = Conflict
    elif status == 403:
        kind = Forbidden
    else:
        kind = BadRequest if status == 400 else ApiError
    return kind(message)


def _swarm_problem(status: int, message: str) -> DockerProblem | None:
    """Swarm's errors that the container rules would call BadRequest or ApiError
    (the container endpoints send neither a 503 nor these words)."""
    if status == 503:
        return NotManager(message)
    if status in (400, 500) and "FailedPrecondition" in message:
        return Conflict(message)
    if status == 500 and "update out of sequence" in message:
        return OutOfSequence(message)
    return None
