"""The Docker Engine, as seen from trio: each request, its deadline, its answer.

aiodocker is asyncio; the filesystem runs on trio. aiodocker lives on the
asyncio loop of a thread of its own (bridge.py, which knows no Docker), and
this module hands it its requests and turns its answers and errors into what
the rest of the program uses.

Every request has a deadline: an engine that does not answer becomes
`DockerUnavailable` within `timeout` seconds, never a hung `ls`. Errors from
the API become the few kinds of errors.py; streaming requests (logs,
archives) write into the sinks of sinks.py.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import json
import logging
import os
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias, TypeVar

import aiodocker
import aiohttp
import orjson
import trio

from dockerfs_fuse.docker import unreachable
from dockerfs_fuse.docker.bridge import AsyncioThread, Stream, await_future, call_soon
from dockerfs_fuse.docker.endpoints import (
    TLS,
    Endpoint,
    EndpointError,
    default_endpoint,
    host_endpoint,
)
from dockerfs_fuse.docker.errors import (
    DOCKER_ERRORS,
    ApiError,
    DockerUnavailable,
    translate,
)
from dockerfs_fuse.docker.framing import Demuxer
from dockerfs_fuse.docker.sinks import ArchiveSink, LogSink, Sink
from dockerfs_fuse.model.containers import Container, all_hex
from dockerfs_fuse.model.ctl import Command

log = logging.getLogger(__name__)


T = TypeVar("T")

# One of Docker's events, as its JSON object (Type, Action, Actor, ...).
Event: TypeAlias = dict[str, Any]

DEFAULT_TIMEOUT = 4.0
# Docker takes time to list containers in proportion to how many there are
# (1.5 s for 10,000 created ones on an idle 2-CPU machine, several seconds
# under load): a container list may take this many times as long as the last
# one took (or the deadline it missed), never less than the usual deadline
# and never more than LIST_TIMEOUT_MAX. A hung engine is still found out
# after the usual deadline while its lists have been quick.
LIST_DEADLINE_FACTOR = 4
LIST_TIMEOUT_MAX = 60.0
# Bytes read from an archive response at a time.
ARCHIVE_CHUNK = 256 << 10
# A container's log streams for as long as it takes; only silence is an error.
LOGS_STALL_TIMEOUT = 30.0


# What a mount without -a shows: the containers that have a process, as
# Docker's default list does (Podman's "stopping" is Docker's "running").
LISTED_STATES = frozenset(["running", "paused", "restarting", "stopping"])


def _is_podman(version: Mapping[str, Any]) -> bool:
    components = version.get("Components") or []
    return any("podman" in str(c.get("Name", "")).lower() for c in components)


async def list_json(d: aiodocker.Docker, path: str, params: Mapping[str, str]) -> list[Any]:
    """A list endpoint's answer, parsed with orjson: at a thousand containers
    the body is ~800 KB, and json.loads of it was the largest part of a root
    listing's own cost (the rest is Docker's). orjson refuses what json
    takes (an escaped lone surrogate in a label, say): then json decides."""
    async with d._query(path, method="GET", params=dict(params)) as response:
        body = await response.read()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = json.loads(body)
    if not isinstance(data, list):
        raise aiodocker.DockerError(500, f"{path}: not a JSON list")
    return data


class DockerSource:
    """Container lists and details from one Docker endpoint.

    `endpoint` is resolved by `endpoints` (the docker CLI's rules); a string
    is taken as a `-H` value, and None as "what the docker CLI would use".
    `requests` counts API calls by kind, for the benchmark and for tests that
    check caching.
    """

    def __init__(
        self, endpoint: Endpoint | str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        try:
            if endpoint is None:
                endpoint = default_endpoint(os.environ)
            elif isinstance(endpoint, str):
                endpoint = host_endpoint(endpoint, os.environ)
        except EndpointError as exc:
            raise DockerUnavailable(str(exc)) from None
        self.target = endpoint
        self.host = endpoint.url
        self.timeout = timeout
        self.requests: collections.Counter[str] = collections.Counter()
        # Seconds spent waiting on `call`'s requests, by kind: what an
        # operation through the mount costs in Docker's answers (make bench).
        self.seconds: collections.defaultdict[str, float] = collections.defaultdict(float)
        self._thread: AsyncioThread | None = None
        self._docker: aiodocker.Docker | None = None
        # Whether the engine is Podman (None until it has answered once).
        self.podman: bool | None = None
        # How long the last container list took, or the deadline it missed.
        self._list_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Start the asyncio thread and create the client in it (synchronous)."""
        self._thread = AsyncioThread("aiodocker")
        try:
            self._docker = self._thread.submit(self._make_client()).result(self.timeout)
        except aiodocker.DockerError as exc:
            # e.g. ssh:// without asyncssh, or with no ~/.ssh/known_hosts
            message = str(getattr(exc, "message", exc))
            if self.target.scheme == "ssh" and "known_hosts" in message:
                message = self._no_known_hosts()
            raise DockerUnavailable(message) from None
        except (ValueError, ssl.SSLError) as exc:
            raise DockerUnavailable(f"bad Docker endpoint {self.host}: {exc}") from None

    def _no_known_hosts(self) -> str:
        """aiodocker's ssh client refuses before connecting when there is no
        ~/.ssh/known_hosts at all (and its message names an option we do not
        have): connect once to tell "nothing listens" from "key unknown"."""
        where = unreachable.Where.of(self.host)
        failed = unreachable.probe(where, self.timeout)
        why = unreachable.explain(self.host, failed) if failed is not None else None
        return f"cannot reach Docker at {self.host}: {why or unreachable.host_key_unknown(where)}"

    async def _make_client(self) -> aiodocker.Docker:
        """Always an explicit URL: aiodocker's own resolution order is not the CLI's."""
        target = self.target
        if target.scheme == "tcp":
            rest = target.url.removeprefix("tcp://")
            if target.tls is None:
                return aiodocker.Docker(url=f"http://{rest}")
            return aiodocker.Docker(url=f"https://{rest}", ssl_context=_ssl_context(target.tls))
        if target.scheme == "ssh":
            _quiet_ssh_logs()
        return aiodocker.Docker(url=target.url)

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
        return self.host

    # -- calls ---------------------------------------------------------------

    def _client(self, what: str) -> tuple[AsyncioThread, aiodocker.Docker]:
        """The started client and its thread, for one request counted as `what`."""
        if self._thread is None or self._docker is None:
            raise DockerUnavailable("Docker client not started")
        self.requests[what] += 1
        return self._thread, self._docker

    async def call(
        self,
        what: str,
        fn: Callable[[aiodocker.Docker], Awaitable[T]],
        timeout: float | None = None,
    ) -> T:
        """One request, counted as `what`: `fn(docker)` run on the asyncio
        thread within `timeout` (the usual deadline if None)."""
        thread, docker = self._client(what)
        deadline = self.timeout if timeout is None else timeout
        started = time.perf_counter()
        try:
            return await await_future(thread.submit(_translated(fn, docker, deadline)))
        finally:
            self._took(what, started)

    def _took(self, what: str, started: float) -> None:
        took = time.perf_counter() - started
        self.seconds[what] += took
        log.debug("request %s: %.1f ms", what, took * 1000)

    @contextlib.contextmanager
    def counted(self, what: str) -> Iterator[None]:
        """A request made on a connection of its own, not the client's
        (docker/writes.py's uploads): counted and timed as `call`'s are."""
        self.requests[what] += 1
        started = time.perf_counter()
        try:
            yield
        finally:
            self._took(what, started)

    @property
    def unix_socket(self) -> str | None:
        """The engine's socket path when it is reached over a local unix socket."""
        return self.target.url.removeprefix("unix://") if self.target.scheme == "unix" else None

    def api_path(self, path: str) -> str:
        """`path` as the client sends it: under the API version it settled on
        at start-up (the engine's own), or unversioned (the engine's newest)."""
        version = getattr(self._docker, "api_version", "auto")
        return f"/{path}" if version == "auto" else f"/{version}/{path}"

    def call_sync(self, what: str, fn: Callable[[aiodocker.Docker], Awaitable[T]]) -> T:
        """The same as `call`, from plain (non-trio) code such as start-up checks."""
        thread, docker = self._client(what)
        try:
            return thread.submit(_translated(fn, docker, self.timeout)).result(self.timeout + 1)
        except concurrent.futures.TimeoutError as exc:
            raise DockerUnavailable("Docker did not answer in time") from exc

    def ping(self) -> str:
        """Check the engine answers; return its version string. Refusals say
        why in the user's words: "cannot reach Docker at URL: no such socket"."""
        try:
            info = self.call_sync("version", lambda d: d.version())
        except DockerUnavailable as exc:
            said = str(exc).removeprefix("cannot reach Docker: ")
            why = unreachable.explain(self.host, exc.cause) or said
            message = f"cannot reach Docker at {self.host}: {why}"
            raise DockerUnavailable(message, exc.cause) from None
        self.podman = _is_podman(info)
        return str(info.get("Version", "?"))

    async def identify(self) -> None:
        """Learn whether the engine is Podman, if start-up could not (it was down)."""
        if self.podman is None:
            info = await self.call("version", lambda d: d.version())
            self.podman = _is_podman(info)

    def _lists_all(self, all: bool) -> bool:
        """Podman leaves paused (and stopping) containers out of its default
        list, where Docker lists them: ask for all and keep those ourselves."""
        return all or bool(self.podman)

    def _listed(self, containers: list[Container], all: bool) -> list[Container]:
        if all or not self.podman:
            return containers
        return [c for c in containers if c.get("State") in LISTED_STATES]

    async def list_containers(self, all: bool = False) -> list[Container]:
        """One `GET /containers/json`: the whole tree's data."""

        async def fetch(d: aiodocker.Docker) -> list[Container]:
            params = {"all": "1"} if self._lists_all(all) else {}
            return await list_json(d, "containers/json", params)

        deadline = self.list_deadline()
        started = trio.current_time()
        try:
            found = await self.call("containers/json", fetch, timeout=deadline)
        except DockerUnavailable as exc:
            if isinstance(exc.__cause__, TimeoutError):
                self._list_seconds = deadline  # slow, or hung: the next may take longer
            raise
        self._list_seconds = trio.current_time() - started
        return self._listed(found, all)

    def list_deadline(self) -> float:
        """How long the next container list may take (LIST_DEADLINE_FACTOR)."""
        grown = LIST_DEADLINE_FACTOR * self._list_seconds
        return max(self.timeout, min(grown, LIST_TIMEOUT_MAX))

    async def _list_filtered(self, filters: dict[str, list[str]], all: bool) -> list[Container]:
        async def fetch(d: aiodocker.Docker) -> list[Container]:
            params = {"filters": json.dumps(filters)}
            if self._lists_all(all):
                params["all"] = "1"
            return await list_json(d, "containers/json", params)

        # Counted apart from full listings: the benchmark checks those.
        return self._listed(await self.call("containers/json?filters", fetch), all)

    async def list_one(self, cid: str, all: bool = False) -> Container | None:
        """One container's list entry (the same shape as the tree's), or None."""
        for c in await self._list_filtered({"id": [cid]}, all):
            if c.get("Id") == cid:
                return c
        return None

    async def list_ids(self, cids: Sequence[str], all: bool = False) -> list[Container]:
        """The list entries of these containers (full IDs), in one request;
        those the engine does not have are left out."""
        wanted = set(cids)
        found = await self._list_filtered({"id": list(cids)}, all)
        return [c for c in found if c.get("Id") in wanted]

    async def find(self, name: str, all: bool = False) -> list[Container]:
        """Containers a name or ID prefix may mean (Docker's filters match loosely;
        the caller decides which, if any, is meant)."""
        found = await self._list_filtered({"name": [name]}, all)
        if len(name) >= 4 and all_hex(name):
            found += await self._list_filtered({"id": [name]}, all)
        return found

    async def inspect(self, cid: str) -> dict[str, Any]:
        async def fetch(d: aiodocker.Docker) -> dict[str, Any]:
            data: dict[str, Any] = await d._query_json(f"containers/{cid}/json")
            return data

        return await self.call("containers/inspect", fetch)

    def stream_logs(
        self, cid: str, out: LogSink, follow: bool, kind: str = "containers"
    ) -> concurrent.futures.Future[None]:
        """One request for a container's log, both streams, frame headers removed,
        written into `out` as it arrives; ends with `out.finish(error or None)`.

        Without `follow`, the log so far: no overall deadline, but Docker must
        start answering, and keep sending, within LOGS_STALL_TIMEOUT. With
        `follow`, the log so far and then new output until the container
        stops: a silent container is not an error. The result cancels it.
        `kind="services"`: a Swarm service's log (every task's), the same way.
        """
        thread, docker = self._client(f"{kind}/logs")
        params = {"stdout": "1", "stderr": "1"}
        if follow:
            params["follow"] = "1"
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.timeout,
            sock_connect=self.timeout,
            sock_read=None if follow else LOGS_STALL_TIMEOUT,
        )

        async def produce() -> None:
            async with docker._query(f"{kind}/{cid}/logs", params=params, timeout=timeout) as resp:
                demux = Demuxer(resp.headers.get("Content-Type", ""))
                async for chunk in resp.content.iter_any():
                    out.write(demux.feed(chunk))
                out.write(demux.flush())

        return _produce_into(thread, produce, out)

    def stream_events(self, out: LogSink) -> concurrent.futures.Future[None]:
        """One `GET /events` (every type), its bytes written into `out` as they
        arrive, after an empty write once Docker has answered (it subscribes
        before it answers, so nothing after that write is missed); ends with
        `out.finish(error or None)` when Docker ends it. The result cancels it."""
        thread, docker = self._client("events/stream")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=None
        )

        async def produce() -> None:
            async with docker._query("events", timeout=timeout) as resp:
                out.write(b"")
                async for chunk in resp.content.iter_any():
                    out.write(chunk)

        return _produce_into(thread, produce, out)

    def stream_archive(
        self, cid: str, path: str, out: ArchiveSink
    ) -> concurrent.futures.Future[None]:
        """One `GET /containers/{id}/archive?path=PATH` (a tar of PATH's subtree),
        fed to `out.write` as it arrives until that returns False; ends with
        `out.finish(error or None)`. The result cancels it.

        No overall deadline (a subtree can be large), but Docker must start
        answering, and keep sending, within the usual deadline.
        """
        thread, docker = self._client("containers/archive")
        # Paths are bytes in the container: percent-encoded as such, not as UTF-8 text.
        query = urllib.parse.quote(os.fsencode(path), safe="/")
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.timeout, sock_connect=self.timeout, sock_read=self.timeout
        )

        async def produce() -> None:
            async with docker._query(
                f"containers/{cid}/archive?path={query}",
                timeout=timeout,
                # aiohttp asks for gzip by default, and the engine then compresses
                # the tar, which makes it several times slower over a socket.
                headers={"Accept-Encoding": "identity"},
            ) as resp:
                try:
                    async for chunk in resp.content.iter_chunked(ARCHIVE_CHUNK):
                        if not out.write(chunk):
                            break
                finally:
                    # Unread, the connection must be closed (aiodocker leaves that
                    # to us): the engine holds the container's lock until it is.
                    resp.close()

        return _produce_into(thread, produce, out)

    async def top(self, cid: str) -> dict[str, Any]:
        """`GET /containers/{id}/top`: Titles and Processes (409 Conflict when not running)."""

        async def fetch(d: aiodocker.Docker) -> dict[str, Any]:
            data = await d._query_json(f"containers/{cid}/top")
            if not isinstance(data, dict):
                raise ApiError(f"top: unexpected answer {str(data)[:80]!r}")
            return data

        return await self.call("containers/top", fetch)

    async def stats(self, cid: str) -> dict[str, Any]:
        """One sample of `GET /containers/{id}/stats` (one-shot: no second sample to wait for)."""

        async def fetch(d: aiodocker.Docker) -> dict[str, Any]:
            params = {"stream": "false", "one-shot": "true"}
            data = await d._query_json(f"containers/{cid}/stats", params=params)
            if not isinstance(data, dict):
                raise ApiError(f"stats: unexpected answer {str(data)[:80]!r}")
            return data

        return await self.call("containers/stats", fetch)

    def wait(self, cid: str) -> concurrent.futures.Future[int]:
        """`POST /containers/{id}/wait`: its result is the exit code, once the
        container is not running (at once if it is not). No deadline but the
        connect's: it waits as long as the container runs. The future cancels it;
        it fails with a DockerProblem."""
        thread, docker = self._client("containers/wait")

        async def run() -> int:
            try:
                async with docker._query(
                    f"containers/{cid}/wait", method="POST", timeout=_stream_timeout(self.timeout)
                ) as resp:
                    try:
                        answer = await resp.json(content_type=None)
                    finally:
                        resp.close()  # cancelled unread: close, as aiodocker does not
                return int(answer["StatusCode"])
            except DOCKER_ERRORS as exc:
                raise translate(exc) from exc

        return thread.submit(run())

    async def control(self, cid: str, command: Command) -> None:
        """Run a ctl command; returns once Docker has done it.

        stop and restart wait as long as Docker may (their timeout plus
        slack), not the usual short deadline.
        """
        method, path = {
            "start": ("POST", f"containers/{cid}/start"),
            "stop": ("POST", f"containers/{cid}/stop"),
            "restart": ("POST", f"containers/{cid}/restart"),
            "kill": ("POST", f"containers/{cid}/kill"),
            "pause": ("POST", f"containers/{cid}/pause"),
            "unpause": ("POST", f"containers/{cid}/unpause"),
            "rm": ("DELETE", f"containers/{cid}"),
        }[command.action]
        params = dict(command.params)
        if command.action in ("stop", "restart") and "t" not in params:
            # Docker would use the container's own stop timeout: ask for it, so
            # our deadline is never shorter than Docker's wait.
            info = await self.inspect(cid)
            params["t"] = str((info.get("Config") or {}).get("StopTimeout") or 10)
        grace = float(params.get("t", 0))
        timeout = self.timeout + grace + 10

        async def run(d: aiodocker.Docker) -> None:
            # 304 (already started / already stopped) is success, as the CLI treats it.
            async with d._query(path, method=method, params=params):
                pass

        await self.call(f"containers/{command.action}", run, timeout)

    def stream(
        self,
        what: str,
        produce: Callable[[aiodocker.Docker, Callable[[T], None]], Awaitable[None]],
    ) -> Stream[T]:
        """Run a long-lived producer on the asyncio side; trio reads a Stream.

        `produce(docker, emit)` calls emit for each item; the Stream ends
        when produce returns, and carries its error if it fails.
        """
        thread, docker = self._client(what)
        token = trio.lowlevel.current_trio_token()
        out = Stream[T]()

        def emit(item: T) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(out.put, item)

        async def run() -> None:
            error: Exception | None = None
            try:
                await produce(docker, emit)
            except DOCKER_ERRORS as exc:
                error = translate(exc)
            except Exception as exc:  # a bug: its reader raises it as it is
                error = exc
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(out.finish, error)

        out.future = thread.submit(run())
        return out

    def events(self, types: Sequence[str] = ("container",), what: str = "events") -> Stream[Event]:
        """Docker's events of these types (containers by default), as decoded
        JSON objects, until the stream drops; counted as `what`."""

        async def produce(d: aiodocker.Docker, emit: Callable[[Event], None]) -> None:
            params = {"filters": json.dumps({"type": list(types)})}
            async with d._query(
                "events", params=params, timeout=_stream_timeout(self.timeout)
            ) as resp:
                async for line in resp.content:
                    if line.strip():
                        event = json.loads(line)
                        if isinstance(event, dict):
                            emit(event)

        return self.stream(what, produce)


async def _translated(
    fn: Callable[[aiodocker.Docker], Awaitable[T]], docker: aiodocker.Docker, deadline: float
) -> T:
    """fn(docker) within `deadline`, its failures as DockerProblem (on the asyncio thread)."""
    try:
        return await asyncio.wait_for(fn(docker), deadline)
    except DOCKER_ERRORS as exc:
        raise translate(exc) from exc


def _produce_into(
    thread: AsyncioThread, produce: Callable[[], Awaitable[None]], out: Sink
) -> concurrent.futures.Future[None]:
    """Run a streaming request on the asyncio thread; `out` hears how it
    ended (finish) and is closed whatever happens. The result cancels it."""

    async def run() -> None:
        try:
            await produce()
        except DOCKER_ERRORS as exc:
            out.finish(translate(exc))
        except Exception as exc:  # the sink's own (a full spool) or a bug: as it is
            out.finish(exc)
        else:
            out.finish(None)
        finally:
            out.close()

    future = thread.submit(run())
    # Cancelled before it ever ran, run() cannot close `out`: do it on the
    # loop's thread, where it cannot race a write.
    loop = thread.loop
    future.add_done_callback(lambda _: call_soon(loop, out.close))
    return future


def _ssl_context(tls: TLS) -> ssl.SSLContext:
    """TLS as the docker CLI sets it up: the given CA (else the system's), the
    client key pair when there is one, and no checks at all when told not to verify."""
    ctx = ssl.create_default_context(cafile=tls.ca)
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert and tls.key:
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


class _OnlyWhenDebugging(logging.Filter):
    """aiodocker's ssh connector logs each failure that it also raises; the
    raised one is reported here once, so its own line is kept for -d."""

    def filter(self, record: logging.LogRecord) -> bool:
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def _quiet_ssh_logs() -> None:
    """asyncssh logs every connection and channel at INFO; a channel is opened
    per HTTP connection, so only -d shows those."""
    ssh_log = logging.getLogger("aiodocker.ssh")
    if not any(isinstance(f, _OnlyWhenDebugging) for f in ssh_log.filters):
        ssh_log.addFilter(_OnlyWhenDebugging())
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("asyncssh").setLevel(logging.WARNING)


def _stream_timeout(connect: float) -> aiohttp.ClientTimeout:
    """No overall deadline for a stream, but a bounded connect."""
    return aiohttp.ClientTimeout(total=None, sock_read=None, connect=connect, sock_connect=connect)
