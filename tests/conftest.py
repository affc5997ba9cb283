"""Shared fixtures: a private dockerd, a real mount, and the rule for missing tools.

Everything a user would see is tested against a real engine and a real
kernel mount. Under CI (CI=true) a missing engine, FUSE device or tool is a
failure, never a skip: a green run must mean the integration tests ran.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.mount_process import (
    MountFailed,
    MountProcess,
    dockerfs_command,
    stop_mount,
    wait_for_mount,
)
from dockerfs_fuse.mount_process import start_mount as _start_mount
from dockerfs_fuse.private_dockerd import IMAGE, DockerdError, PrivateDockerd

__all__ = ["dockerfs_command", "stop_mount", "wait_for_mount"]

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip with the reason printed; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI: {why}", pytrace=False)
    pytest.skip(why)


def require_fuse() -> None:
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(shutil.which("fusermount3") is not None, "fusermount3 missing (Debian fuse3)")


# -- the Docker API, asked directly (not through the code under test) ---------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


@dataclass
class Engine:
    """The private dockerd, plus a direct view of its API for assertions."""

    dockerd: PrivateDockerd
    started: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.dockerd.host

    def api(self, path: str) -> Any:
        return json.loads(self.api_raw(path))

    def api_raw(self, path: str) -> bytes:
        conn = _UnixHTTPConnection(str(self.dockerd.socket))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status, body[:200])
            return body
        finally:
            conn.close()

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/containers/json" + ("?all=1" if all else ""))
        return result

    def run(self, *args: str) -> str:
        cid = self.dockerd.run(*args)
        self.started.append(cid)
        return cid

    def docker(self, *args: str, check: bool = True) -> str:
        return self.dockerd.docker(*args, check=check).stdout.decode()

    def remove_started(self) -> None:
        if self.started:
            self.dockerd.docker("rm", "-f", *self.started, check=False)
            self.started.clear()


@pytest.fixture(scope="session")
def dockerd_session() -> Iterator[PrivateDockerd]:
    require(os.geteuid() == 0, "the private dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd missing (Debian docker.io)")
    require(shutil.which("busybox") is not None, "busybox missing (Debian busybox-static)")
    d = PrivateDockerd()
    t0 = time.monotonic()
    try:
        d.start()
        d.import_busybox()
    except DockerdError as exc:
        d.cleanup()
        pytest.fail(f"private dockerd: {exc}", pytrace=False)
    print(f"\nprivate dockerd ready with {IMAGE} in {time.monotonic() - t0:.1f}s at {d.base}")
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def engine(dockerd_session: PrivateDockerd) -> Iterator[Engine]:
    """The session's engine; containers a test starts are removed after it."""
    if dockerd_session.proc is None or dockerd_session.proc.poll() is not None:
        dockerd_session.start()  # a test stopped it; bring it back for the next
    e = Engine(dockerd_session)
    yield e
    if dockerd_session.proc is None:
        dockerd_session.start()
    e.remove_started()


# -- a real mount ------------------------------------------------------------------------

Mount = MountProcess


def start_mount(host: str, mountpoint: Path, *extra: str) -> Mount:
    require_fuse()
    try:
        return _start_mount(host, mountpoint, *extra)
    except MountFailed as exc:
        raise AssertionError(str(exc)) from None


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Any]:
    mounts: list[Mount] = []

    def make(host: str, *extra: str, name: str = "mnt") -> Mount:
        m = start_mount(host, tmp_path / name, *extra)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        stop_mount(m)


@pytest.fixture
def mounted(engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(engine.host)
    return m


def is_enoent(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT


# -- a private multi-node Swarm (issue 11) -------------------------------------------------

SWARM_NODES = 3


@pytest.fixture(scope="session")
def swarm_session() -> Iterator[Any]:
    """A real 3-node swarm on this host: node1 manages, node2 and node3 work.

    Each node is a private dockerd in a network namespace of its own (see
    private_swarm); needs root, docker.io, busybox-static, iproute2 and util-linux.
    """
    from dockerfs_fuse.private_swarm import PrivateSwarm

    require(os.geteuid() == 0, "the private swarm needs root")
    for tool, package in (
        ("dockerd", "docker.io"),
        ("busybox", "busybox-static"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ):
        require(shutil.which(tool) is not None, f"{tool} missing (Debian {package})")
    swarm = PrivateSwarm(SWARM_NODES)
    try:
        swarm.start()
    except DockerdError as exc:
        pytest.fail(f"private swarm: {exc}", pytrace=False)
    print(f"\nprivate swarm of {SWARM_NODES} ready in {swarm.start_seconds:.1f}s at {swarm.base}")
    try:
        yield swarm
    finally:
        swarm.cleanup()
        print(f"\nprivate swarm stopped in {swarm.stop_seconds:.1f}s")


@pytest.fixture
def swarm(swarm_session: Any) -> Iterator[Any]:
    """The session's swarm, put back after each test: no services, every node
    active, node1 the only manager."""
    yield swarm_session
    swarm_session.reset()
