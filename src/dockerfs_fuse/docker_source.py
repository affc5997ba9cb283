"""The Docker Engine, as seen from trio: the only module that knows aiodocker.

aiodocker is asyncio; the filesystem runs on trio. Rather than mixing event
loops in one thread, aiodocker lives on an asyncio loop in a thread of its
own and trio awaits its results through a thread-safe future. That keeps the
bridge in this one file, so it can be swapped (for trio-asyncio, say) without
touching anything else.

Every request has a deadline: an engine that does not answer becomes
`DockerUnavailable` within `timeout` seconds, never a hung `ls`. Errors from
the API are translated here into the few kinds the rest of the program
distinguishes; the FUSE adapter turns those into errnos in one place.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import aiodocker
import aiohttp
import trio

from .tree import Container

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 4.0


class DockerProblem(Exception):
    """Anything that went wrong talking to Docker; message is Docker's own."""


class DockerUnavailable(DockerProblem):
    """The engine cannot be reached or did not answer in time."""


class NotFound(DockerProblem):
    """HTTP 404: the container (or image) is gone."""


class Conflict(DockerProblem):
    """HTTP 409: the request conflicts with the container's state."""


class BadRequest(DockerProblem):
    """HTTP 400: Docker refused the arguments."""


class ApiError(DockerProblem):
    """Any other error status."""


def _translate(exc: BaseException) -> DockerProblem:
    if isinstance(exc, DockerProblem):
        return exc
    if isinstance(exc, aiodocker.DockerError):
        message = str(getattr(exc, "message", exc))
        status = getattr(exc, "status", 0)
        kind: type[DockerProblem] = {404: NotFound, 409: Conflict, 400: BadRequest}.get(
            status, ApiError
        )
        return kind(message)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return DockerUnavailable("Docker did not answer in time")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return DockerUnavailable(f"cannot reach Docker: {exc}")
    return ApiError(f"{type(exc).__name__}: {exc}")


class _AsyncioThread:
    """An asyncio event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="aiodocker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()


async def _await_future(fut: concurrent.futures.Future[T]) -> T:
    """Wait in trio for a future completed on another thread; cancel it if we are."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    fut.add_done_callback(wake)
    try:
        await done.wait()
    except BaseException:
        fut.cancel()
        raise
    return fut.result()


class DockerSource:
    """Container lists and details from one Docker endpoint.

    `host` None means aiodocker's own resolution (DOCKER_HOST, the docker
    context, then the usual socket paths). `requests` counts API calls by
    kind, for the benchmark and for tests that check caching.
    """

    def __init__(self, host: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.timeout = timeout
        self.requests: collections.Counter[str] = collections.Counter()
        self._thread: _AsyncioThread | None = None
        self._docker: aiodocker.Docker | None = None

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the asyncio thread and create the client in it (synchronous)."""
        self._thread = _AsyncioThread()
        self._docker = self._thread.submit(self._make_client()).result(self.timeout)

    async def _make_client(self) -> aiodocker.Docker:
        return aiodocker.Docker(url=self.host)

    def close(self) -> None:
        if self._thread is None:
            return
        if self._docker is not None:
            try:
                self._thread.submit(self._docker.close()).result(self.timeout)
            except Exception as exc:  # closing is best effort: we are exiting
                log.debug("closing the Docker client: %s", exc)
        self._thread.stop()
        self._thread = None

    @property
    def endpoint(self) -> str:
        return self.host or getattr(self._docker, "_connection_info", "") or "default"

    # -- calls ---------------------------------------------------------------

    async def _call(
        self, what: str, fn: Callable[[aiodocker.Docker], Awaitable[T]], timeout: float | None
    ) -> T:
        if self._thread is None or self._docker is None:
            raise DockerUnavailable("Docker client not started")
        self.requests[what] += 1
        docker = self._docker
        deadline = self.timeout if timeout is None else timeout

        async def run() -> T:
            try:
                return await asyncio.wait_for(fn(docker), deadline)
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise _translate(exc) from exc

        return await _await_future(self._thread.submit(run()))

    def call_sync(self, what: str, fn: Callable[[aiodocker.Docker], Awaitable[T]]) -> T:
        """The same as `_call`, from plain (non-trio) code such as start-up checks."""
        if self._thread is None or self._docker is None:
            raise DockerUnavailable("Docker client not started")
        self.requests[what] += 1
        docker = self._docker

        async def run() -> T:
            try:
                return await asyncio.wait_for(fn(docker), self.timeout)
            except Exception as exc:
                raise _translate(exc) from exc

        try:
            return self._thread.submit(run()).result(self.timeout + 1)
        except concurrent.futures.TimeoutError as exc:
            raise DockerUnavailable("Docker did not answer in time") from exc

    def ping(self) -> str:
        """Check the engine answers; return its version string."""
        info = self.call_sync("version", lambda d: d.version())
        return str(info.get("Version", "?"))

    async def list_containers(self, all: bool = False) -> list[Container]:
        """One `GET /containers/json`: the whole tree's data."""

        async def fetch(d: aiodocker.Docker) -> list[Container]:
            params = {"all": "1"} if all else {}
            data = await d._query_json("containers/json", method="GET", params=params)
            return list(data)

        return await self._call("containers/json", fetch, None)
