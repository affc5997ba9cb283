"""Every way out of a mount releases each resource once: each Docker source
closed, the FUSE session closed and unmounted, the 9P shim stopped.

Unit tests: Docker, libfuse and the shim are fakes that count, put where
lifecycle.mount takes them from; the lifecycle itself runs as it does for real.
"""

from __future__ import annotations

import collections
import os
import signal
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.endpoints import Endpoint
from dockerfs_fuse.docker.errors import DockerUnavailable
from dockerfs_fuse.fuse import kernel_cache
from dockerfs_fuse.lifecycle import mount
from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.ninep.child import ShimFailed

# What each fake did, by "what name": "close a", "unmount", "stop shim", ...
Calls = collections.Counter[str]


class FakeSource:
    """A DockerSource whose start or ping fails for the names it is told."""

    fail_start: frozenset[str] = frozenset()
    fail_ping: frozenset[str] = frozenset()
    calls: Calls

    def __init__(self, target: Endpoint) -> None:
        self.target = target
        self.endpoint = target.url
        self.podman = False

    def start(self) -> None:
        self.calls[f"start {self.target.name}"] += 1
        if self.target.name in self.fail_start:
            raise DockerUnavailable(f"bad endpoint {self.target.name}")

    def ping(self) -> str:
        if self.target.name in self.fail_ping:
            raise DockerUnavailable(f"cannot reach Docker at {self.endpoint}: nothing there")
        return "1.0"

    def close(self) -> None:
        self.calls[f"close {self.target.name}"] += 1


class FakeEngines:
    """The engine layer over the fake sources: nothing to release of its own."""

    def __init__(self, sources: dict[str, FakeSource], *_: object, **__: object) -> None:
        self.sources = sources


class FakeFS:
    def __init__(self, engines: FakeEngines, *_: object) -> None:
        self.engines = engines

    def close(self) -> None:
        """Nothing staged to keep."""

    async def run_invalidator(self) -> None:
        await trio.sleep_forever()

    async def run_events(self) -> None:
        await trio.sleep_forever()


class FakeShim:
    fails = False
    calls: Calls

    def __init__(self, *_: object) -> None:
        pass

    def start(self) -> None:
        if self.fails:
            raise ShimFailed("9P: cannot listen")

    def alive(self) -> bool:
        return True

    def stop(self) -> None:
        self.calls["stop shim"] += 1


class FakeFuse:
    """pyfuse3's init, main, terminate and close; `serving` is what main does."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls
        self.refuse = False
        self.serving: Callable[[], Any] = self.until_terminated
        self.terminated = trio.Event()

    def init(self, fs: FakeFS, mountpoint: str, options: set[str]) -> None:
        if self.refuse:
            raise RuntimeError("fuse: bad mount point")
        self.calls["mount"] += 1

    async def main(self, max_tasks: int) -> None:
        await self.serving()

    def terminate(self) -> None:
        self.terminated.set()

    def close(self, unmount: bool) -> None:
        self.calls["unmount" if unmount else "close without unmount"] += 1

    async def until_terminated(self) -> None:
        await self.terminated.wait()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    counted: Calls = collections.Counter()
    monkeypatch.setattr(FakeSource, "calls", counted, raising=False)
    monkeypatch.setattr(FakeShim, "calls", counted, raising=False)
    monkeypatch.setattr(mount, "DockerSource", FakeSource)
    monkeypatch.setattr(mount, "Engines", FakeEngines)
    monkeypatch.setattr(mount, "DockerFS", FakeFS)
    monkeypatch.setattr(mount, "Shim", FakeShim)
    caching = SimpleNamespace(enabled=False, why="off (a test)")
    monkeypatch.setattr(kernel_cache, "detect", lambda: caching)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    yield counted


@pytest.fixture
def fuse(monkeypatch: pytest.MonkeyPatch, calls: Calls) -> FakeFuse:
    fake = FakeFuse(calls)
    for name in ("init", "main", "terminate", "close"):
        monkeypatch.setattr(pyfuse3, name, getattr(fake, name))
    return fake


def config(*names: str, ninep: bool = False) -> MountConfig:
    endpoints = [Endpoint(name, f"unix:///run/{name}.sock") for name in names]
    return MountConfig("/mnt", endpoints=endpoints, ninep=["tcp!127.0.0.1!5640"] if ninep else [])


def released_once(calls: Calls, *names: str, mounted: bool = True, shim: bool = False) -> None:
    """Every source started was closed once; the mount, if made, unmounted once."""
    closed = {f"close {name}": 1 for name in names}
    assert {k: v for k, v in calls.items() if k.startswith("close")} == closed
    assert calls["unmount"] == calls["mount"] == (1 if mounted else 0)
    assert calls["stop shim"] == (1 if shim else 0)


def test_an_external_unmount_releases_everything_once(calls: Calls, fuse: FakeFuse) -> None:
    async def unmounted_at_once() -> None:
        await trio.testing.wait_all_tasks_blocked()

    fuse.serving = unmounted_at_once
    assert mount.run_mounted(config("a", "b", ninep=True)) == 0
    released_once(calls, "a", "b", shim=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_releases_everything_once(
    calls: Calls, fuse: FakeFuse, signum: signal.Signals
) -> None:
    told: list[str | None] = []

    async def signalled() -> None:
        await trio.testing.wait_all_tasks_blocked()  # the signal receiver is open
        assert told == [None]
        os.kill(os.getpid(), signum)
        await fuse.terminated.wait()

    fuse.serving = signalled
    assert mount.run_mounted(config("a", "b"), told.append) == 0
    released_once(calls, "a", "b")


def test_a_failure_while_serving_releases_everything_once(calls: Calls, fuse: FakeFuse) -> None:
    async def broken() -> None:
        raise RuntimeError("a bug")

    fuse.serving = broken
    with pytest.raises(ExceptionGroup) as raised:
        mount.run_mounted(config("a", "b"))
    assert raised.group_contains(RuntimeError, match="a bug")
    released_once(calls, "a", "b")


def test_a_shim_that_fails_to_start_releases_everything_once(
    calls: Calls, fuse: FakeFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeShim, "fails", True)
    with pytest.raises(MountError, match="9P: cannot listen"):
        mount.run_mounted(config("a", ninep=True))
    released_once(calls, "a", shim=True)


def test_a_refused_mount_closes_each_source_once(calls: Calls, fuse: FakeFuse) -> None:
    fuse.refuse = True
    with pytest.raises(MountError, match="cannot mount /mnt: fuse: bad mount point"):
        mount.run_mounted(config("a", "b"))
    released_once(calls, "a", "b", mounted=False)


def test_a_source_that_fails_to_start_closes_those_started_once(
    calls: Calls, fuse: FakeFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeSource, "fail_start", frozenset({"b"}))
    with pytest.raises(MountError, match="bad endpoint b"):
        mount.run_mounted(config("a", "b", "c"))
    assert "start c" not in calls
    released_once(calls, "a", "b", mounted=False)  # b's start may have left a thread


def test_a_lone_engine_that_does_not_answer_is_closed_once(
    calls: Calls, fuse: FakeFuse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FakeSource, "fail_ping", frozenset({"a"}))
    with pytest.raises(MountError, match=r"^cannot reach Docker at unix:///run/a\.sock: nothing"):
        mount.run_mounted(config("a"))
    released_once(calls, "a", mounted=False)


def test_ping_closes_each_source_once(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    assert mount.ping_engines(config("a", "b").endpoints) == [
        "a: Docker 1.0 at unix:///run/a.sock",
        "b: Docker 1.0 at unix:///run/b.sock",
    ]
    released_once(calls, "a", "b", mounted=False)
    calls.clear()
    monkeypatch.setattr(FakeSource, "fail_ping", frozenset({"b"}))
    with pytest.raises(MountError):
        mount.ping_engines(config("a", "b").endpoints)
    released_once(calls, "a", "b", mounted=False)
