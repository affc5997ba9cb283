"""The engine view's event streams (engine/events.py) under trio, with a fake
Docker: whole lines only, one request per open, the bound on what a reader
leaves unread (dropped, with a marker line, then EOF), and the cap on streams."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import trio
import trio.testing

from dockerfs_fuse.engine.events import (
    DROPPED_MARKER,
    MAX_UNREAD,
    EventSpool,
    EventStreams,
)
from dockerfs_fuse.engine.logs import LogWriter, TooManyLogs


class FakeRequest:
    def __init__(self, out: LogWriter) -> None:
        self.out = out
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeDocker:
    def __init__(self) -> None:
        self.requests: list[FakeRequest] = []

    def start(self, out: LogWriter) -> FakeRequest:
        self.requests.append(FakeRequest(out))
        return self.requests[-1]


async def until(check: Callable[[], bool]) -> None:
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.001)


def event(n: int, pad: int = 0) -> bytes:
    return json.dumps({"Type": "container", "Action": "start", "n": n, "pad": "x" * pad}).encode()


def test_readers_see_whole_lines_once_docker_answered() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spool = EventStreams(docker.start).open()
        assert isinstance(spool, EventSpool)
        out = docker.requests[0].out
        assert not spool.subscribed.is_set()
        out.write(b"")
        await until(spool.subscribed.is_set)
        line = event(1) + b"\n"
        out.write(line[:10])
        out.write(line[10:] + event(2)[:5])
        await until(lambda: spool.size > 0)
        assert spool.read(0, 1 << 20) == line
        assert not spool.at_eof(follow=True)  # a pipe: more may come

    trio.run(main)


def test_each_open_is_its_own_request_and_they_are_capped() -> None:
    async def main() -> None:
        docker = FakeDocker()
        streams = EventStreams(docker.start, limit=2)
        first, second = streams.open(), streams.open()
        assert first is not second and len(docker.requests) == 2
        with pytest.raises(TooManyLogs):
            streams.open()
        streams.release(first)
        assert docker.requests[0].cancelled
        streams.open()
        assert len(docker.requests) == 3

    trio.run(main)


def test_a_reader_who_falls_behind_gets_a_marker_then_eof() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spool = EventStreams(docker.start).open()
        request = docker.requests[0]
        line = event(0, pad=1000) + b"\n"
        read = spool.read(0, 1 << 20)  # the reader keeps up at first
        assert read == b""
        count = MAX_UNREAD // len(line) + 2
        for _ in range(count):
            request.out.write(line)
        await until(lambda: spool.dropped)
        assert request.cancelled
        # Docker may still send what it had: none of it is shown.
        request.out.write(line)
        request.out.finish(None)
        await trio.testing.wait_all_tasks_blocked()
        got = b""
        while True:
            chunk = spool.read(len(got), 1 << 16)
            if not chunk:
                break
            got += chunk
        assert got.endswith(DROPPED_MARKER)
        lines = got[: -len(DROPPED_MARKER)]
        assert lines and lines == line * (len(lines) // len(line))
        assert len(lines) <= MAX_UNREAD + len(line)
        assert json.loads(DROPPED_MARKER)["Action"] == "dropped"
        assert spool.at_eof(follow=True)

    trio.run(main)


def test_a_reader_who_keeps_up_is_never_dropped() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spool = EventStreams(docker.start).open()
        request = docker.requests[0]
        line = event(0, pad=1000) + b"\n"
        offset = 0
        batch = line * 64
        for _ in range(3 * MAX_UNREAD // len(batch)):
            request.out.write(batch)
            before = offset
            await until(lambda: spool.size > before)  # noqa: B023 (awaited here)
            offset += len(spool.read(offset, 1 << 20))
        assert not spool.dropped and not request.cancelled

    trio.run(main)
