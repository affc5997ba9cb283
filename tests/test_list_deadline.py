"""A container list's deadline grows with how long lists take: at 10,000
containers on a loaded machine Docker's list outlasts the usual deadline,
and a listing must not fail with EIO for it, while a hung engine is still
found out after the usual deadline. DockerSource with its requests faked
(no engine, no thread): only the deadlines it asks for are checked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import DockerUnavailable
from dockerfs_fuse.docker.source import (
    DEFAULT_TIMEOUT,
    LIST_DEADLINE_FACTOR,
    LIST_TIMEOUT_MAX,
    DockerSource,
)


class TimedSource(DockerSource):
    """Each list takes `takes` seconds of trio's clock, or times out past its deadline."""

    def __init__(self) -> None:
        super().__init__("unix:///nonexistent.sock")
        self.takes = 0.0
        self.deadlines: list[float] = []

    async def call(
        self, what: str, fn: Callable[[Any], Awaitable[Any]], timeout: Any = None
    ) -> Any:
        self.deadlines.append(timeout)
        if self.takes > timeout:
            await trio.sleep(timeout)
            try:
                raise TimeoutError
            except TimeoutError as exc:
                raise DockerUnavailable("Docker did not answer in time") from exc
        await trio.sleep(self.takes)
        return []


def test_the_deadline_grows_with_slow_lists_and_after_a_missed_one() -> None:
    source = TimedSource()

    async def main() -> None:
        source.takes = 0.5
        await source.list_containers()  # quick: the usual deadline
        await source.list_containers()
        source.takes = 3.0  # 10,000 containers under load
        await source.list_containers()
        source.takes = 20.0  # slower than 4x the last: missed once, then met
        with pytest.raises(DockerUnavailable):
            await source.list_containers()
        await source.list_containers()
        source.takes = 1000.0  # hung: the deadline stops growing
        for _ in range(3):
            with pytest.raises(DockerUnavailable):
                await source.list_containers()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    f = LIST_DEADLINE_FACTOR
    assert source.deadlines[:5] == [
        DEFAULT_TIMEOUT,
        DEFAULT_TIMEOUT,  # 4 x 0.5 s is less than the usual deadline
        DEFAULT_TIMEOUT,
        f * 3.0,
        f * f * 3.0,
    ]
    assert source.deadlines[5:] == [LIST_TIMEOUT_MAX] * 3
