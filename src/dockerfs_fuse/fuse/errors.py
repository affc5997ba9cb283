"""Errors become errnos here, and only here.

Every request handler is wrapped in `guard`, so no exception ever escapes
into pyfuse3 (which would end the main loop): Docker's errors and anything
unexpected become errnos, logged once with the request that failed.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pyfuse3

from dockerfs_fuse.docker.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    DockerProblem,
    Forbidden,
    NoSpace,
    NotFound,
    ReadOnlyFs,
)
from dockerfs_fuse.engine.archive import ArchiveError
from dockerfs_fuse.engine.logs import SpoolError
from dockerfs_fuse.model.ctl import BadCommand
from dockerfs_fuse.model.files import PathError

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


def errno_for(exc: BaseException) -> int:
    """The one place Docker's errors become errnos."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, NotFound):
        return errno.ENOENT
    if isinstance(exc, AlreadyExists):
        return errno.EEXIST
    if isinstance(exc, NoSpace):
        return errno.ENOSPC
    if isinstance(exc, ReadOnlyFs):
        return errno.EROFS
    if isinstance(exc, Conflict):
        return errno.EBUSY
    if isinstance(exc, Forbidden):
        return errno.EPERM
    if isinstance(exc, BadRequest | BadCommand):
        return errno.EINVAL
    if isinstance(exc, PathError):
        return exc.errno
    return errno.EIO  # unreachable engine, any other API error, anything unexpected


def guard(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Let only FUSEError reach pyfuse3; log everything else once."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except PathError as exc:  # ENOENT under root/ and the like: answers, not faults
            log.debug("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except (DockerProblem, BadCommand, ArchiveError, SpoolError) as exc:
            log.warning("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(errno_for(exc)) from None
        except Exception:
            log.exception("%s%r failed", fn.__name__, args[1:])
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def fail(code: int) -> pyfuse3.FUSEError:
    """The answer `code`, to raise."""
    return pyfuse3.FUSEError(code)


def refusal_reason(exc: Exception) -> str:
    """What an `err` file says of a refused write: Docker's message or ours."""
    if isinstance(exc, DockerProblem | BadCommand) and str(exc):
        return str(exc)
    if isinstance(exc, pyfuse3.FUSEError):
        return os.strerror(exc.errno)
    return f"internal error: {type(exc).__name__} (see the daemon's log)"
