"""What keeps a view fresh, shared by the container and the Swarm caches.

- `Refresher`: one list request at a time; callers that arrive meanwhile
  share its answer.
- `MissLimiter`: a name nobody listed asks the engine at most once per
  interval, so a probe loop (shells, editors) cannot become a request loop.
- `Removals`: removal events kept while a read sent before them is in
  flight, so that its older answer does not bring a container back.
- `follow_events`: an event stream kept up, with a re-listing at each
  (re)connect and a backoff while the engine is away.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar

import trio

from dockerfs_fuse.docker.errors import DockerProblem

log = logging.getLogger(__name__)

T = TypeVar("T")
E = TypeVar("E")
E_co = TypeVar("E_co", covariant=True)
K = TypeVar("K", bound=Hashable)

# A lookup miss of a name asks the engine at most this often.
MISS_REFRESH_INTERVAL = 1.0
# Missed names remembered for that; beyond, all are forgotten at once (a scan
# of that many names within an interval costs one more request per name).
MISSES_KEPT = 1024
# The first retry of a dropped event stream, in seconds; it doubles up to the caller's cap.
RECONNECT_FIRST = 0.5


class _Shared(Generic[T]):
    """One list request and its outcome, shared by everyone who waited for it."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.result: T | None = None
        self.error: Exception | None = None


class Refresher(Generic[T]):
    """One list request at a time; callers that arrive meanwhile share it."""

    def __init__(self, fetch: Callable[[], Awaitable[T]]) -> None:
        self._fetch = fetch
        self._current: _Shared[T] | None = None

    async def get(self) -> T:
        while True:
            shared = self._current
            if shared is None:
                shared = self._current = _Shared[T]()
                try:
                    shared.result = await self._fetch()
                    return shared.result
                except Exception as exc:
                    shared.error = exc
                    raise
                finally:
                    self._current = None
                    shared.done.set()
            await shared.done.wait()
            if shared.error is not None:
                raise shared.error
            if shared.result is not None:
                return shared.result
            # the request we waited on was cancelled: make our own


class MissLimiter(Generic[K]):
    """When a missed name may ask the engine again (see the module doc)."""

    def __init__(
        self,
        interval: float = MISS_REFRESH_INTERVAL,
        kept: int = MISSES_KEPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._kept = kept
        self._clock = clock
        self._asked: dict[K, float] = {}

    def may_ask(self, key: K) -> bool:
        """Whether a miss of `key` may ask now; if so, it counts as asked."""
        now = self._clock()
        if now - self._asked.get(key, -math.inf) < self._interval:
            return False
        if len(self._asked) > self._kept:
            self._asked.clear()
        self._asked[key] = now
        return True

    def found(self, key: K) -> None:
        """The engine knew it: the next miss of it (a removal) may ask at once."""
        self._asked.pop(key, None)

    def gone(self, key: K) -> None:
        """The engine just said `key` is gone (a removal event): a miss of it
        need not ask again within the interval."""
        self.may_ask(key)


class Removals(Generic[K]):
    """Removal events by number, kept while a read sent before them is in flight.

    Such a read's answer is older than the removal and must be dropped. What
    is kept is the removals since the oldest read in flight (each read has a
    deadline), however many: none is forgotten early, and keeping and
    forgetting one costs the same at ten containers as at ten thousand.
    Event numbers only grow, so reads start in order.
    """

    def __init__(self) -> None:
        self._at: dict[K, int] = {}
        self._order: collections.deque[tuple[int, K]] = collections.deque()
        self._reads: collections.Counter[int] = collections.Counter()
        self._starts: collections.deque[int] = collections.deque()  # distinct, ascending

    def __len__(self) -> int:
        return len(self._at)

    def removed(self, key: K, seq: int) -> None:
        if self._reads:  # a read sent later is numbered after it: nothing to drop
            self._at[key] = seq
            self._order.append((seq, key))

    def after(self, key: K, seq: int) -> bool:
        """Whether `key` was removed after event number `seq`."""
        return self._at.get(key, 0) > seq

    def read_sent(self, seq: int) -> None:
        """A read sent at event number `seq` is in flight until `read_done(seq)`."""
        self._reads[seq] += 1
        if not self._starts or self._starts[-1] != seq:
            self._starts.append(seq)

    def read_done(self, seq: int) -> None:
        self._reads[seq] -= 1
        if not self._reads[seq]:
            del self._reads[seq]
        while self._starts and self._starts[0] not in self._reads:
            self._starts.popleft()
        self._forget()

    def _forget(self) -> None:
        if not self._starts:
            self._at.clear()
            self._order.clear()
            return
        oldest = self._starts[0]
        while self._order and self._order[0][0] <= oldest:
            seq, key = self._order.popleft()
            if self._at.get(key) == seq:
                del self._at[key]


class EventStream(Protocol[E_co]):
    """docker.bridge.Stream, as a follower reads it."""

    def __aiter__(self) -> AsyncIterator[E_co]: ...
    def close(self) -> None: ...


class Follower(Protocol[E]):
    """What follow_events keeps fresh: a cache with an event stream."""

    name: str

    def open_events(self) -> EventStream[E]:
        """Ask for the event stream (it is read after resync())."""

    async def resync(self) -> None:
        """List everything again: what changed while no events came."""

    def on_event(self, event: E) -> None: ...

    def set_events_up(self, up: bool) -> None:
        """The stream is up (events will tell of changes) or down (trust less)."""


async def follow_events(
    follower: Follower[E],
    what: str,
    backoff_max: float,
    *,
    while_down: str = "",
    logger: logging.Logger = log,
) -> None:
    """Read the follower's events for ever, reconnecting with backoff.

    On each (re)connect, resync() first, so what changed while the stream
    was down is caught. The stream dropping is logged once ("<what> ...;
    retrying<while_down>"), and its return once. A bug must not unmount:
    it is logged with its traceback and the stream reconnects. Lines go to
    `logger`, the follower's own.
    """
    backoff = RECONNECT_FIRST
    down = False
    while True:
        stream = follower.open_events()
        try:
            await follower.resync()
            if down:
                logger.info("%s: %s reconnected", follower.name, what)
            down, backoff = False, RECONNECT_FIRST
            follower.set_events_up(True)
            async for event in stream:
                follower.on_event(event)
            problem = "ended"
        except DockerProblem as exc:
            problem = str(exc)
        except Exception:
            logger.exception("%s: %s", follower.name, what)
            problem = "failed"
        finally:
            stream.close()
        follower.set_events_up(False)
        if not down:
            logger.warning("%s: %s %s; retrying%s", follower.name, what, problem, while_down)
            down = True
        await trio.sleep(backoff)
        backoff = min(backoff * 2, backoff_max)
